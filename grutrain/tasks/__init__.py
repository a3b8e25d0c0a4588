"""Tasks: what to learn, from which data, judged by which metrics (see protocols.Task).

Rule: one folder per task (tasks/<task>/) holds everything only that task reads; a task imports no
other task, and no module outside tasks/ names a task except through this registry.

The training loop knows nothing about text, series or labels: it asks `training_task` for the
task object of a config. Every command that reads a checkpoint asks `open_checkpoint` for the
task, the trained model and the payload; no command reads a task's checkpoint keys itself.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch

from grutrain.capacity import check_model_loads
from grutrain.files.checkpoint import load_checkpoint
from grutrain.config.schema import Config, validate_config
from grutrain.errors import GrutrainError
from grutrain.tasks.protocols import Split, Task

TASK_CLASSES = {
    "lm": ("grutrain.tasks.lm.task", "LanguageModelTask"),
    "forecast": ("grutrain.tasks.forecast.task", "ForecastTask"),
    "classify": ("grutrain.tasks.classify.task", "ClassifyTask"),
    "synthetic": ("grutrain.tasks.synthetic.task", "SyntheticTask"),
}


def task_class(name: str) -> type[Task]:
    module, cls = TASK_CLASSES[name]  # imported on demand: `grutrain --help` loads no task
    return getattr(importlib.import_module(module), cls)


def training_task(cfg: Config, *, rows_per_step: int, saved: dict | None = None, rank: int = 0,
                  world_size: int = 1) -> Task:
    """The task of a config, ready to train: data read, split, and a sampler drawing `rows_per_step`
    rows of each optimizer step on this process (`saved`: the checkpoint being resumed, if any)."""
    return task_class(cfg.task).from_config(cfg, rows_per_step=rows_per_step, saved=saved, rank=rank,
                                            world_size=world_size)


@dataclass
class OpenedCheckpoint:
    task: Task  # built from the checkpoint's config and task_state
    model: torch.nn.Module  # the trained model, in eval mode, on the device
    payload: dict  # the whole checkpoint (current schema)
    path: Path
    device: torch.device

    @property
    def cfg(self) -> Config:
        return self.task.cfg

    @property
    def step(self) -> int:
        return self.payload["trainer"]["step"]


def open_checkpoint(path: str | Path, device: torch.device) -> OpenedCheckpoint:
    """The task, the trained model and the payload of a checkpoint, from the file alone (no YAML).

    Every problem becomes a GrutrainError that names the file.
    """
    path = Path(path)
    payload = load_checkpoint(path, map_location=device)
    try:
        cfg = validate_config(payload["config"])  # checked like a YAML's
        task = task_class(cfg.task).from_checkpoint(cfg, payload["task_state"])
        check_model_loads(task.build_model, "its config")  # an impossible size is refused, not allocated
        model = task.build_model()
    except GrutrainError as exc:
        raise GrutrainError(f"{path}: {exc}") from None
    try:
        model.load_state_dict(payload["model"])
    except (RuntimeError, TypeError, AttributeError, KeyError) as exc:
        raise GrutrainError(f"{path}: the weights do not fit the model its config describes: "
                            f"{str(exc).splitlines()[0][:200]}") from None
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise GrutrainError(f"{path}: the weights are not finite (NaN or inf); use an earlier checkpoint")
    return OpenedCheckpoint(task, model.to(device).eval(), payload, path, device)


def eval_target(task: Task, split: str, data_path: str | Path | None) -> Split:
    """What `grutrain eval --split SPLIT [--data FILE]` reads: the held-out split, or all of FILE.

    A checkpoint that records where its held-out data is instead of carrying it (lm beyond
    data.carry_max_tokens) takes FILE as that data file at its new place when it is the same
    file (size and sha256): then the split is still SPLIT (the task's `relocate`).
    """
    if data_path is None:
        return split
    relocate = getattr(task, "relocate", None)
    if relocate is not None and relocate(Path(data_path)):
        return split
    return Path(data_path)
