"""Checkpoints: one self-describing file, written atomically, loaded without running code.

The schema (format_version 2) has fixed top-level keys:

    format_version, grutrain_version   which grutrain wrote it
    task                               the task's name (grutrain.tasks.TASKS)
    config                             the resolved config, as a dict (rebuilds the model without the YAML)
    model                              the model's state dict
    optimizer, scaler                  their state dicts
    trainer                            the loop's state: step, epoch, monitor (best metric, early stopping),
                                       loss_window, skipped_steps, bad_in_a_row, wall_time_s, global_batch,
                                       world_size
    sampler, hidden                    the data position and the carried GRU state (or None)
    rng, rank_rng                      random states (this rank's, every rank's)
    task_state                         what the task needs beyond the weights (vocabulary, normalisation,
                                       held-out data); only the task reads it

`torch.load(weights_only=True)` reads it, so an untrusted file cannot run code when it is loaded.
Version-1 files (every key at the top level) are upgraded to this layout when loaded; what a task
kept in its own keys, the task upgrades (grutrain.tasks.checkpoints.load_checkpoint).
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from grutrain import __version__
from grutrain.errors import GrutrainError
from grutrain.files.atomic import write_file
from grutrain.files.inputs import CHECKPOINT_EXPANSION, open_input

FORMAT_VERSION = 2

# What every checkpoint holds (and of which type); the training keys only matter to --resume.
MODEL_KEYS = {"task": str, "config": dict, "model": dict, "trainer": dict, "task_state": dict}
TRAINING_KEYS = {"optimizer": dict, "scaler": dict, "sampler": dict, "rng": dict, "rank_rng": list}
TOP_LEVEL_KEYS = ("format_version", "grutrain_version", *MODEL_KEYS, *TRAINING_KEYS, "hidden")


@dataclass
class TrainerState:
    """The training loop's own state: everything but the model, optimizer and data position."""

    step: int = 0
    epoch: int = 0
    monitor: dict = field(default_factory=dict)
    loss_window: list = field(default_factory=lambda: [0.0, 0])  # [sum of step losses, steps] since the last log
    skipped_steps: int = 0
    bad_in_a_row: int = 0
    wall_time_s: float = 0.0  # over every stretch of a resumed run
    global_batch: int = 0  # rows per optimizer step over all processes
    world_size: int = 1

    @classmethod
    def from_dict(cls, state: dict) -> "TrainerState":
        return cls(**{k: v for k, v in state.items() if k in cls.__dataclass_fields__})

    def to_dict(self) -> dict:
        return asdict(self)


def training_payload(*, task: str, config: dict, model: dict, optimizer: dict, scaler: dict,
                     trainer: TrainerState, sampler: dict, hidden: torch.Tensor | None, rng: dict,
                     rank_rng: list, task_state: dict) -> dict[str, Any]:
    """The checkpoint of a training run, every key of the schema in place."""
    return {"format_version": FORMAT_VERSION, "grutrain_version": __version__, "task": task, "config": config,
            "model": model, "optimizer": optimizer, "scaler": scaler, "trainer": trainer.to_dict(),
            "sampler": sampler, "hidden": hidden, "rng": rng, "rank_rng": rank_rng, "task_state": task_state}


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """Write through files.atomic: a crash at any moment leaves the old file or the new one, never a
    torn file; a full disk (an OSError, or torch's zip writer's "unexpected pos") is one line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format_version": FORMAT_VERSION, "grutrain_version": __version__, **payload}
    write_file(path, lambda f: torch.save(payload, f), "checkpoint")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load, upgrade to the current schema and check a checkpoint; any problem is a GrutrainError naming the file."""
    path = Path(path)
    name = str(path)
    if path.is_dir():
        raise GrutrainError(f"checkpoint {name!r} is a directory; give a .pt file such as runs/charlm-1/checkpoints/best.pt")
    if not path.exists():
        raise GrutrainError(f"checkpoint {name!r} not found; give a .pt file such as runs/charlm-1/checkpoints/best.pt")
    # A regular file (not a FIFO or a device) that fits in memory.
    with open_input(path, "checkpoint", expansion=CHECKPOINT_EXPANSION) as file:
        if os.fstat(file.fileno()).st_size == 0:
            raise GrutrainError(f"checkpoint {name!r} is empty (0 bytes); it was not written completely")
        payload = _torch_load(file, name, map_location)
    return _checked(payload, name)


def _torch_load(file, name: str, map_location) -> Any:
    try:
        with warnings.catch_warnings():  # torch warns about odd pickle protocols; the error below says it all
            warnings.simplefilter("ignore")
            payload = torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses pickles that would import or call anything. torch's message starts by
        # advising weights_only=False (running the file's code): keep only what it found.
        raise GrutrainError(f"checkpoint {name!r} was refused: it holds more than tensors and plain values "
                            f"({_unpickler_finding(str(exc))}), so it is not a grutrain checkpoint") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise GrutrainError(f"checkpoint {name!r} is not a readable checkpoint (truncated or not a torch file): "
                            f"{str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}") from None
    except Exception as exc:  # any other decoder failure on hostile bytes
        raise GrutrainError(f"checkpoint {name!r} is not a readable checkpoint: {type(exc).__name__}") from None
    return payload


def _checked(payload: Any, name: str) -> dict[str, Any]:
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise GrutrainError(f"checkpoint {name!r} is not a grutrain checkpoint (no format_version)")
    version = payload["format_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise GrutrainError(f"checkpoint {name!r} is damaged: format_version {version!r} is not a version number")
    if version > FORMAT_VERSION:
        raise GrutrainError(f"checkpoint {name!r} has format version {version}, newer than this grutrain "
                            f"understands ({FORMAT_VERSION}); upgrade grutrain")
    if version == 1:
        payload = upgrade_v1(payload)
    _check_types(payload, MODEL_KEYS, name)
    if not isinstance(payload["trainer"].get("step"), int):
        raise GrutrainError(f"checkpoint {name!r} is damaged: it has no step count")
    return payload


def _unpickler_finding(message: str) -> str:
    """What the weights-only unpickler objected to, as short printable text."""
    found = message.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in message else ""
    found = found.split("Check the documentation", 1)[0]
    found = " ".join("".join(c if c.isprintable() else " " for c in found).split())
    return found[:120] or "content the safe loader does not accept"


def check_training_state(payload: dict[str, Any], path: str | Path) -> None:
    """What --resume needs beyond the model: optimizer, scaler, sampler and random states."""
    _check_types(payload, TRAINING_KEYS, str(path))
    hidden = payload.get("hidden")
    if hidden is not None and not (isinstance(hidden, torch.Tensor) and hidden.dim() == 3):
        raise GrutrainError(f"checkpoint {str(path)!r} is damaged: its carried state is not a [layers, batch, "
                            "hidden] tensor; resume from another checkpoint")


def _check_types(payload: dict, expected: dict[str, type], name: str) -> None:
    for key, kind in expected.items():
        if key not in payload:
            raise GrutrainError(f"checkpoint {name!r} is incomplete: it has no {key!r}")
        if not isinstance(payload[key], kind):
            raise GrutrainError(f"checkpoint {name!r} is damaged: {key!r} is a {type(payload[key]).__name__}, "
                                f"not a {kind.__name__}")


# Version 1 kept the loop's state and the task's state at the top level.
_V1_TRAINER_KEYS = tuple(TrainerState.__dataclass_fields__)  # the same names, then at the top level


def upgrade_v1(payload: dict[str, Any]) -> dict[str, Any]:
    """A version-1 payload in the version-2 layout (nothing is lost: every v1 key has a place).

    What was the task's own (its keys, its config keys that moved since) stays as it was: the task
    reads it (grutrain.tasks.checkpoints)."""
    old = dict(payload)
    trainer = {key: old.pop(key) for key in _V1_TRAINER_KEYS if key in old}
    trainer.setdefault("global_batch", (old.get("config") or {}).get("train", {}).get("batch_size", 0)
                       if isinstance(old.get("config"), dict) else 0)
    top = {key: old.pop(key) for key in TOP_LEVEL_KEYS if key in old}
    # What is left is the task's: vocab, eval_tokens, normalisation, eval_series, ...
    return {**top, "format_version": FORMAT_VERSION, "trainer": trainer, "task_state": old}
