"""The interfaces a model is exported with: named inputs -> named outputs around a SequenceModel.

A task picks one in its `export_io` (the Exports ability); commands/export_formats.py writes and checks
the wrapped model in each format (batch and sequence are dynamic axes):
    LanguageModelIO    tokens [batch, sequence] int64, hidden [layers, batch, hidden_size] float32
                       -> logits [batch, sequence, vocab], hidden_out [layers, batch, hidden_size]
    PaddedSequenceIO   inputs [batch, sequence] int64 token ids or [batch, sequence, channels] float32,
                       lengths [batch] int64 (right-padded batches) -> the head's output [batch, outputs]
    SequenceIO         inputs [batch, sequence(, features)] -> the head's output ([batch, outputs], or
                       [batch, sequence, classes] for a per-step model)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LanguageModelIO(nn.Module):
    """(tokens, hidden) -> (logits, hidden_out): the hidden state goes in and out, so text can be
    generated one step at a time and long texts read in pieces."""

    input_names, output_names = ["tokens", "hidden"], ["logits", "hidden_out"]

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor, hidden: Tensor):
        return self.model(tokens, hidden)


class SequenceIO(nn.Module):
    """inputs -> the head's output (SequenceModel without padding)."""

    def __init__(self, model, output_name: str):
        super().__init__()
        self.model = model
        self.input_names, self.output_names = ["inputs"], [output_name]

    def forward(self, inputs: Tensor):
        return self.model(inputs)[0]


class PaddedSequenceIO(nn.Module):
    """(inputs, lengths) -> the head's output at each sequence's own last step (right-padded batches)."""

    def __init__(self, model, output_name: str):
        super().__init__()
        self.model = model
        self.input_names, self.output_names = ["inputs", "lengths"], [output_name]

    def forward(self, inputs: Tensor, lengths: Tensor):
        # An explicit zero state (= None): the ONNX exporter fails on a one-layer GRU over packed
        # sequences without one.
        gru = self.model.gru
        states = gru.num_layers * (2 if gru.bidirectional else 1)
        hidden = torch.zeros(states, inputs.shape[0], gru.hidden_size, dtype=self.model.head.weight.dtype,
                             device=inputs.device)
        return self.model(inputs, hidden, lengths)[0]
