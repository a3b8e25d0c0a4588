"""The Task protocol: what the training loop and every command may ask of a task.

A task is one object that owns its whole life. It is built either

- for training, by `Task.from_config(cfg, rows_per_step=..., saved=..., rank=..., world_size=...)`:
  it reads its data, splits it and draws batches (`sampler`); or
- from a checkpoint, by `Task.from_checkpoint(cfg, task_state)`, for eval, sample, predict, export
  and plots: what it needs (vocabulary, normalisation, the held-out data when small) comes from
  the checkpoint's `task_state`, which is what `state()` returned when it was saved.

Either way it builds the untrained model its weights fit (`build_model`), evaluates a model on a
held-out split or on another data file, and draws its figure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Union

import torch
from torch import nn

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


class Task(Protocol):
    name: str
    cfg: Any  # the task's validated config (grutrain.config.schema.Config)
    predicts: bool  # whether `predict` gives outputs for new inputs (forecast, classify)

    # Training side: set by from_config, None/unused when built from a checkpoint.
    sampler: Sampler | None
    carries_state: bool  # consecutive batches continue each other: carry the GRU state (truncated BPTT)
    items_per_batch: int  # tokens or time steps in one global batch, for throughput

    @classmethod
    def from_config(cls, cfg, *, rows_per_step: int, saved: dict | None = None, rank: int = 0,
                    world_size: int = 1) -> "Task": ...

    @classmethod
    def from_checkpoint(cls, cfg, task_state: dict) -> "Task": ...

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

    def figure(self, model: nn.Module, split: Split, device: torch.device):
        """The task's matplotlib figure for `grutrain eval --plot`."""

    def predict(self, model: nn.Module, input_path: Path, device: torch.device) -> list[dict]:
        """One row per prediction for new inputs (forecast, classify); others raise GrutrainError."""

    # Optional: relocate(path) -> bool, for a task whose checkpoint records where its held-out data is
    # instead of carrying it (lm): True when `path` is that data file at a new place (eval_target).

    def usage(self) -> dict:
        """What it takes to turn raw data into the model's inputs and its outputs into answers (export's JSON)."""
