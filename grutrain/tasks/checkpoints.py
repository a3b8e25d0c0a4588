"""A checkpoint as its task reads it: the payload in today's schema, and the task and model it rebuilds.

files/checkpoint.py reads the file and upgrades its layout; what an older version kept in a task's own
keys is the task's to upgrade: its config class moves the config keys it renamed (`moved_keys`), its
task class reads the task_state of every version it wrote. No command reads a task's checkpoint keys
itself; each calls `open_checkpoint(path, device)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from grutrain.capacity import check_model_loads
from grutrain.config.schema import Config, move_keys
from grutrain.errors import GrutrainError
from grutrain.files import checkpoint as checkpoint_file
from grutrain.files.atomic import remove_stale_temporaries
from grutrain.tasks import DEFAULT_TASK, TASKS, config_class, task_class, validate_config
from grutrain.tasks.protocols import Relocates, Split, Task


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """files.checkpoint.load_checkpoint, with the config keys the task has moved since in their places
    (a version-1 language model's train.sample_* become sample.*)."""
    payload = checkpoint_file.load_checkpoint(path, map_location)
    name = payload["config"].get("task", DEFAULT_TASK)
    if isinstance(name, str) and name in TASKS:  # an unknown task is named when the config is validated
        payload["config"] = move_keys(payload["config"], config_class(name).moved_keys)
    return payload


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
    # A save killed beside this checkpoint left a temporary (a whole checkpoint's size): eval, export,
    # sample and predict clear the dead ones, as the next save into the directory does. Not done in
    # load_checkpoint itself: under DDP on several machines, a rank there cannot tell whether a PID
    # in a temporary's name is a live process on another machine.
    remove_stale_temporaries(path.parent)
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
    file (size and sha256): then the split is still SPLIT (the Relocates ability).
    """
    if data_path is None:
        return split
    if isinstance(task, Relocates) and task.relocate(Path(data_path)):
        return split
    return Path(data_path)
