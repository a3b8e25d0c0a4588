"""What the training loop and every command may ask of a task: a core every task has, and abilities.

A task is one object that owns its whole life. It is built either

- for training, by `Task.from_config(cfg, rows_per_step=..., saved=..., rank=..., world_size=...)`:
  it reads its data, splits it and draws batches (`sampler`); or
- from a checkpoint, by `Task.from_checkpoint(cfg, task_state)`, for eval, sample, predict, export
  and plots: what it needs (vocabulary, normalisation, the held-out data when small) comes from
  the checkpoint's `task_state`, which is what `state()` returned when it was saved.

Either way it builds the untrained model its weights fit (`build_model`) and evaluates a model on a
held-out split or on another data file. That is the core (`Task`). The rest are abilities, each a
small runtime-checkable Protocol a task class has or has not (Predicts, Samples, Figures, Exports,
Relocates, PreparesAhead). A command that needs one calls `require(task, Ability, "command")`, so a
task without it is refused in one line, the same way for every command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Union, runtime_checkable

import torch
from torch import nn

from grutrain.errors import GrutrainError
from grutrain.tasks import TASKS, task_class

Split = Union[str, Path]  # "val", "test", or a data file to evaluate on instead


class Sampler(Protocol):
    """Draws the training batches; its state goes into every checkpoint (exact resume)."""

    epoch: int
    batches_per_epoch: int
    global_batch: int  # rows per optimizer step over all processes
    rows: slice  # this process's rows of the global batch

    def next_batch(self) -> tuple: ...  # (*tensors, starts_epoch: bool)

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@runtime_checkable
class Task(Protocol):
    """The core: what fit, eval and every checkpoint need of every task."""

    name: str  # its name in the registry (grutrain.tasks.TASKS)
    cfg: Any  # the task's validated config (its TaskConfig subclass)

    # Training side: set by from_config, None/unused when built from a checkpoint.
    sampler: Sampler | None
    carries_state: bool  # consecutive batches continue each other: carry the GRU state (truncated BPTT)
    items_per_batch: int  # tokens or time steps in one global batch, for throughput

    @classmethod
    def from_config(cls, cfg, *, rows_per_step: int, saved: dict | None = None, rank: int = 0,
                    world_size: int = 1) -> "Task": ...

    @classmethod
    def from_checkpoint(cls, cfg, task_state: dict) -> "Task":
        """Rebuilt from a checkpoint's task_state, of any version this task ever wrote."""

    def build_model(self) -> nn.Module: ...

    def loss(self, model: nn.Module, batch: list[torch.Tensor], hidden) -> tuple[torch.Tensor, Any]: ...

    def has_split(self, split: str) -> bool: ...

    def evaluate(self, model: nn.Module, split: Split, device: torch.device,
                 amp_dtype: torch.dtype | None = None, *, whole: bool = True) -> dict[str, float]:
        """The metrics logged as val/<name> during fit (loss first).

        whole=False (fit's evaluations before the last) lets a task read a fixed, capped subset of
        a large split (lm: train.eval_tokens); whole=True, the default of every command, reads all of it."""

    def report(self, model: nn.Module, split: Split, device: torch.device) -> dict:
        """What `grutrain eval` prints: the split's name and size, the metrics, the baselines on the same data."""

    def baselines(self) -> dict[str, float]: ...

    def state(self) -> dict:
        """The checkpoint's task_state: what from_checkpoint needs to rebuild this task."""

    def on_evaluation(self, model: nn.Module, device: torch.device, step: int, logger) -> None:
        """Extras at each evaluation during fit (a text sample, a figure in TensorBoard)."""

    def final_extras(self, model: nn.Module, device: torch.device) -> dict:
        """Extras for summary.json at the end of fit."""


@runtime_checkable
class Predicts(Protocol):
    """`grutrain predict`: outputs for new inputs."""

    def predict(self, model: nn.Module, input_path: Path, device: torch.device) -> list[dict]:
        """One row per prediction (a forecast step, a classified example)."""


@runtime_checkable
class Samples(Protocol):
    """`grutrain sample`: text generated from a prompt."""

    def sample(self, model: nn.Module, prompt: str, length: int, *, temperature: float = 1.0,
               top_k: int | None = None, seed: int | None = None,
               device: torch.device = torch.device("cpu")) -> str:
        """The prompt followed by `length` generated tokens; the same seed gives the same text."""


@runtime_checkable
class Figures(Protocol):
    """`grutrain eval --plot`: the task's figure of a model on a split."""

    def figure(self, model: nn.Module, split: Split, device: torch.device):
        """A matplotlib figure."""


@runtime_checkable
class Exports(Protocol):
    """`grutrain export`: the model's interface outside grutrain and how to use it."""

    @staticmethod
    def export_io(model: nn.Module) -> nn.Module:
        """The model behind the exported interface (tasks/export_io.py): named inputs -> named outputs."""

    def usage(self) -> dict:
        """What it takes to turn raw data into the model's inputs and its outputs into answers (export's JSON)."""


@runtime_checkable
class Relocates(Protocol):
    """A task whose checkpoint may record where its held-out data is instead of carrying it (eval_target)."""

    def relocate(self, path: Path) -> bool:
        """True when `path` is that data file at a new place; eval then reads the recorded split from it."""


@runtime_checkable
class PreparesAhead(Protocol):
    """`grutrain prepare CONFIG`: the work fit would do on the data first, done ahead (lm: the token cache)."""

    @classmethod
    def prepare(cls, cfg, progress: bool = True) -> dict:
        """What was prepared, for the command to print."""


@runtime_checkable
class Caches(Protocol):
    """`grutrain cache`: files the task keeps between runs outside any run (lm: token caches)."""

    @classmethod
    def list_caches(cls, cache_dir: str | None = None) -> list[dict]:
        """One dict per cache: id, files, bytes, source, source_exists, and what it holds."""

    @classmethod
    def remove_caches(cls, ids: list[str], cache_dir: str | None = None, everything: bool = False) -> list[dict]:
        """Remove the caches of `ids` (or all, with leftover temporaries); the entries removed."""


def has_ability(task, ability: type) -> bool:
    """Whether a task (an object, or its class for a command that has no task object) has an ability."""
    return issubclass(task, ability) if isinstance(task, type) else isinstance(task, ability)


def require(task, ability: type, command: str) -> None:
    """Refuse, in one line, a command that a task (object or class) cannot serve."""
    if has_ability(task, ability):
        return
    able = [name for name in TASKS if has_ability(task_class(name), ability)]
    if not able:
        raise GrutrainError(f"task {task.name} has no {command}")
    which = f"task {able[0]} has" if len(able) == 1 else f"tasks {', '.join(able[:-1])} and {able[-1]} have"
    raise GrutrainError(f"task {task.name} has no {command} ({which} one)")
