"""Language-model metrics on a split: loss, perplexity, bits per token."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from grutrain.data.text import eval_streams
from grutrain.errors import GrutrainError


@torch.no_grad()
def evaluate_lm(model, tokens: torch.Tensor, seq_len: int, max_streams: int, device: torch.device,
                autocast_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Mean next-token loss over every token of `tokens`, carrying the hidden state along."""
    was_training = model.training
    model.eval()
    total, count, hidden = 0.0, 0, None
    for inputs, targets, rows in eval_streams(tokens, seq_len, max_streams):
        inputs, targets = inputs.to(device), targets.to(device)
        hidden = hidden[:, rows] if hidden is not None else None
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits, hidden = model(inputs, hidden)
        total += float(F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="sum"))
        count += targets.numel()
    model.train(was_training)
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "bpc": loss / math.log(2)}


def evaluate_checkpoint(path, *, split: str = "val", data_path=None, device: str = "auto") -> dict:
    """Metrics of a checkpoint on its own data split, or on all of another text file."""
    from grutrain.checkpoint import load_checkpoint
    from grutrain.config import validate_config
    from grutrain.data.text import Vocabulary, load_text_splits, read_text_file, tokenize
    from grutrain.model import model_from_checkpoint
    from grutrain.runtime import resolve_device

    dev = resolve_device(device)
    payload = load_checkpoint(path, map_location=dev)
    model = model_from_checkpoint(payload, dev)
    cfg = validate_config(payload["config"])
    vocab = Vocabulary(payload["vocab"])
    if data_path is not None:
        tokens = vocab.encode(tokenize(read_text_file(data_path), cfg.data.tokenizer, cfg.data.lowercase))
        split_name = str(data_path)
    elif "eval_tokens" in payload:
        tokens = payload["eval_tokens"][split].long()
        split_name = split
    else:
        splits = load_text_splits(cfg.data, vocab=vocab)
        tokens = splits.val if split == "val" else splits.test
        split_name = split
    if len(tokens) < 2:
        raise GrutrainError(f"the {split_name} split has {len(tokens)} tokens; nothing to evaluate")
    if int(tokens.min()) < 0 or int(tokens.max()) >= len(vocab):
        raise GrutrainError(f"checkpoint {str(path)!r} is damaged: its {split} tokens are outside its vocabulary")
    metrics = evaluate_lm(model, tokens, cfg.data.seq_len, cfg.train.batch_size, dev)
    return {"checkpoint": str(path), "step": payload["step"], "split": split_name, "tokens": len(tokens) - 1, **metrics}
