"""Shuffled mini-batches of examples: the sampler of every example-based task.

Like the text WindowSampler: the order is drawn from a generator of its own, its state at the
start of the epoch is saved with the position in every checkpoint (exact resume), and under DDP
every rank draws the same global batch and keeps its own rows of it.
"""

from __future__ import annotations

from typing import Callable

import torch

from grutrain.errors import GrutrainError


class EpochSampler:
    """What every sampler shares: epochs of `batches_per_epoch` batches, each epoch drawn from a
    generator of the sampler's own, and a position that a checkpoint saves and restores exactly.

    Subclasses set `batches_per_epoch` and implement `_draw_epoch()` (which uses `self.generator`).
    """

    batches_per_epoch: int

    def _begin(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self.position = 0  # batches already taken in this epoch
        self._start_epoch()

    def _draw_epoch(self) -> None:
        raise NotImplementedError

    def _start_epoch(self) -> None:
        self._epoch_start_state = self.generator.get_state()
        self._draw_epoch()

    def _take_position(self) -> tuple[int, bool]:
        """(index of the next batch within its epoch, whether it starts the epoch); moves on by one."""
        if self.position == self.batches_per_epoch:
            self.epoch += 1
            self.position = 0
            self._start_epoch()
        k = self.position
        self.position += 1
        return k, k == 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "epoch_start_rng": self._epoch_start_state}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self.generator.set_state(state["epoch_start_rng"])
        self._start_epoch()
        # Data that shrank since (train.allow_data_change): the epoch it was in is over, the next one begins.
        self.position = min(self.position, self.batches_per_epoch)


class ShuffledBatches(EpochSampler):
    """`make_batch(indices) -> tuple of tensors` is called with this rank's example indices."""

    def __init__(self, num_examples: int, batch_size: int, seed: int, make_batch: Callable[[torch.Tensor], tuple],
                 rank: int = 0, world_size: int = 1, what: str = "examples"):
        self.num_examples = num_examples
        self.make_batch = make_batch
        self.global_batch = batch_size * world_size
        self.rows = slice(rank * batch_size, (rank + 1) * batch_size)
        self.batches_per_epoch = num_examples // self.global_batch
        if self.batches_per_epoch < 1:
            processes = f" x {world_size} processes" if world_size > 1 else ""
            raise GrutrainError(f"the training split has {num_examples} {what}, fewer than one batch of "
                                f"train.batch_size={batch_size}{processes}; lower train.batch_size or give more data")
        self._begin(seed)

    def _draw_epoch(self) -> None:
        self._order = torch.randperm(self.num_examples, generator=self.generator)

    def next_batch(self) -> tuple:
        """(*tensors of the batch, starts_epoch)."""
        k, starts_epoch = self._take_position()
        G = self.global_batch
        indices = self._order[k * G : (k + 1) * G][self.rows]
        return (*self.make_batch(indices), starts_epoch)
