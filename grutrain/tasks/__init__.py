"""Tasks: what to learn, from which data, judged by which metrics.

The training loop (train.py) knows nothing about text, series or labels; it talks to a task
object built by `build_task`, which has:

    sampler            .next_batch() -> (batch: tuple of tensors, starts_epoch: bool),
                       .state_dict() / .load_state_dict(), .epoch, .batches_per_epoch,
                       .global_batch, .rows (this rank's rows of the global batch)
    carries_state      True when consecutive batches continue each other (the loop then
                       carries the GRU state across batches, detached: truncated BPTT)
    items_per_batch    how many items (tokens, time steps) one global batch holds, for throughput
    build_model()      the nn.Module to train
    loss(model, batch, hidden) -> (scalar loss, new hidden)
    evaluate(model, split, device, amp_dtype) -> {"loss": ..., other metrics}   (split: "val"|"test")
    has_split(split)   whether the split has data to evaluate
    baselines()        {"val/<name>": value}: what a trivial predictor scores, shown next to the model
    checkpoint_state() what the checkpoint needs beyond weights (vocabulary, normalisation, ...)
    on_evaluation(model, device, step, metrics)   extras at each evaluation (a text sample, ...)
    final_extras(model, device) -> dict           extras for summary.json (a text sample, ...)

and for `grutrain eval` / `predict` each task module has
`model_for_checkpoint(payload, cfg)` (the untrained model a checkpoint's weights fit),
`evaluate_checkpoint(payload, model, cfg, split, data_path, device) -> dict` and, where the
task predicts something for new inputs (forecast, classify),
`predict(payload, model, cfg, input_path, device) -> list[dict]` (one row per output line).
"""

from __future__ import annotations

import importlib

import torch

from grutrain.errors import GrutrainError

TASK_MODULES = {
    "lm": "grutrain.tasks.lm",
    "forecast": "grutrain.tasks.forecast",
    "classify": "grutrain.tasks.classify",
    "synthetic": "grutrain.tasks.synthetic",
}


def task_module(name: str):
    return importlib.import_module(TASK_MODULES[name])


def build_task(cfg, saved: dict | None, rank: int = 0, world_size: int = 1):
    """The task object for a config; `saved` is the checkpoint being resumed, if any."""
    return task_module(cfg.task).build(cfg, saved, rank, world_size)


def load_trained_model(payload: dict, device: torch.device, source: str = "checkpoint"):
    """(model in eval mode, validated config) rebuilt from a loaded checkpoint alone, no YAML.

    `source` names the file in error messages.
    """
    from grutrain.config import validate_config  # the checkpoint's config is checked like a YAML's

    try:
        cfg = validate_config(payload["config"])
        model = task_module(cfg.task).model_for_checkpoint(payload, cfg)
    except GrutrainError as exc:
        raise GrutrainError(f"{source}: {exc}") from None
    try:
        model.load_state_dict(payload["model"])
    except (RuntimeError, TypeError, AttributeError, KeyError) as exc:
        raise GrutrainError(f"{source}: the weights do not fit the model its config describes: "
                            f"{str(exc).splitlines()[0][:200]}") from None
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise GrutrainError(f"{source}: the weights are not finite (NaN or inf); use an earlier checkpoint")
    return model.to(device).eval(), cfg
