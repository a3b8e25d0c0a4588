"""Language-model metrics on a split: loss, perplexity, bits per character."""

from __future__ import annotations

import math

import torch

from grutrain.errors import GrutrainError
from torch.nn import functional as F

from grutrain.data.text import eval_streams


@torch.no_grad()
def evaluate_lm(model, tokens, seq_len: int, max_streams: int, device: torch.device,
                autocast_dtype: torch.dtype | None = None, *, max_tokens: int | None = None, seed: int = 0,
                chars_per_token: float = 1.0) -> dict[str, float]:
    """Mean next-token loss over every token of `tokens` (or a seeded subset of about max_tokens),
    carrying the hidden state along. bpc is bits per character: bits per token / characters per
    token, so models with different tokenisers compare."""
    was_training = model.training
    model.eval()
    total, count, hidden = 0.0, 0, None
    for inputs, targets, rows in eval_streams(tokens, seq_len, max_streams, max_tokens, seed):
        inputs, targets = inputs.to(device), targets.to(device)
        hidden = hidden[:, rows] if hidden is not None else None
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits, hidden = model(inputs, hidden)
        total += float(F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="sum"))
        count += targets.numel()
    model.train(was_training)
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "bpc": loss / math.log(2) / chars_per_token}


def evaluate_checkpoint(path, *, split: str = "val", data_path=None, device: str = "auto") -> dict:
    """Metrics of a checkpoint on a held-out split of its data, or on another data file."""
    from grutrain.checkpoint import load_checkpoint
    from grutrain.runtime import resolve_device
    from grutrain.tasks import load_trained_model, task_module

    dev = resolve_device(device)
    payload = load_checkpoint(path, map_location=dev)
    model, cfg = load_trained_model(payload, dev, source=str(path))
    try:
        metrics = task_module(cfg.task).evaluate_checkpoint(payload, model, cfg, split, data_path, dev)
    except GrutrainError as exc:
        raise GrutrainError(f"{path}: {exc}") from None
    return {"checkpoint": str(path), "task": cfg.task, "step": payload["step"], **metrics}
