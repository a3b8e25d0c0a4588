"""Shuffled mini-batches of examples: the sampler of every example-based task.

Like the text WindowSampler: the order is drawn from a generator of its own, its state at the
start of the epoch is saved with the position in every checkpoint (exact resume), and under DDP
every rank draws the same global batch and keeps its own rows of it.
"""

from __future__ import annotations

from typing import Callable

import torch

from grutrain.errors import GrutrainError


class ShuffledBatches:
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
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self.position = 0
        self._start_epoch()

    def _start_epoch(self) -> None:
        self._epoch_start_state = self.generator.get_state()
        self._order = torch.randperm(self.num_examples, generator=self.generator)

    def next_batch(self) -> tuple:
        """(*tensors of the batch, starts_epoch)."""
        if self.position == self.batches_per_epoch:
            self.epoch += 1
            self.position = 0
            self._start_epoch()
        starts_epoch = self.position == 0
        k, G = self.position, self.global_batch
        indices = self._order[k * G : (k + 1) * G][self.rows]
        self.position += 1
        return (*self.make_batch(indices), starts_epoch)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "epoch_start_rng": self._epoch_start_state}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self.generator.set_state(state["epoch_start_rng"])
        self._start_epoch()
