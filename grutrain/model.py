"""Token embedding (or one-hot) -> GRU -> linear head over the vocabulary."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from grutrain.config import ModelConfig
from grutrain.gru import GRU


class LanguageModel(nn.Module):
    """A recurrent language model: predicts token t+1 from tokens up to t."""

    def __init__(self, vocab_size: int, cfg: ModelConfig):
        super().__init__()
        self.vocab_size = vocab_size
        # embedding_dim 0 feeds one-hot vectors, as d2l.ai's from-scratch RNNs do.
        self.embedding = nn.Embedding(vocab_size, cfg.embedding_dim) if cfg.embedding_dim > 0 else None
        input_size = cfg.embedding_dim or vocab_size
        gru_args = dict(
            input_size=input_size,
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_layers,
            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
            batch_first=True,
        )
        if cfg.backend == "torch":
            self.gru = nn.GRU(**gru_args)
        else:
            self.gru = GRU(**gru_args, reset=cfg.reset)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.hidden_size, vocab_size)

    def forward(self, tokens: torch.Tensor, hidden: torch.Tensor | None = None):
        """tokens [B, T] -> (logits [B, T, V], hidden [num_layers, B, H])."""
        if self.embedding is not None:
            x = self.embedding(tokens)  # [B, T, E]
        else:
            x = F.one_hot(tokens, self.vocab_size).to(self.head.weight.dtype)  # [B, T, V]
        output, hidden = self.gru(x, hidden)  # [B, T, H]
        return self.head(self.dropout(output)), hidden
