"""Optimizers and the learning rate as a pure function of the step (as nanoGPT does)."""

from __future__ import annotations

import math

import torch

from grutrain.config.schema import OptimConfig


def build_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    params = list(params)
    return cls(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=_fusable(params) or None)


def _fusable(params) -> bool:
    """Adam's fused kernel (one pass per parameter instead of ~7 ATen calls, the single-tensor
    default on CPU) takes floating-point parameters on CPU or CUDA."""
    tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
    return bool(tensors) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in tensors)


def lr_at(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based); no scheduler state to save or restore."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** ((step - cfg.warmup_steps) // cfg.step_size)
    # cosine from lr down to lr * min_lr_ratio over the steps after warm-up
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    min_lr = cfg.lr * cfg.min_lr_ratio
    return min_lr + 0.5 * (cfg.lr - min_lr) * (1 + math.cos(math.pi * progress))
