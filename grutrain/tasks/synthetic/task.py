"""Synthetic long-memory problems (adding, copy memory) and a noisy sine, generated from the seed.

kind    input per step            model head                    loss / metrics
adding  (value, marker) [T, 2]    last state -> 1 number        MSE / mse        vs always answering 1.0
copy    tokens [T]                every step -> num_symbols+1   cross-entropy over all T steps /
                                                                accuracy on the recalled symbols
                                                                vs the memoryless strategy
sine    value [T, 1]              last state -> 1 number        MSE / mse, mae   vs the last value

Nothing is read from disk and nothing but a fingerprint of the data goes into the checkpoint: the
splits are regenerated from the config and train.seed (problems.py).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from grutrain.data.batching import ShuffledBatches
from grutrain.tasks.synthetic.problems import (SPLITS, Split, always_one_mse, check_data_config, make_split,
                                     memoryless_copy, naive_last_value, split_seed)
from grutrain.errors import GrutrainError
from grutrain.model import SequenceModel
from grutrain.runtime import evaluating
from grutrain.tasks.export_io import SequenceIO
from grutrain.tasks.protocols import Split as SplitName

EVAL_BATCH = 500  # sequences per forward pass at evaluation; no gradients, so larger than training's


def build_model(cfg) -> SequenceModel:
    data = cfg.data
    if data.kind == "copy":
        # Tokens: blank, the symbols, the delimiter; classes: blank and the symbols.
        return SequenceModel(cfg.model, data.num_symbols + 1, vocab_size=data.num_symbols + 2, per_step=True)
    return SequenceModel(cfg.model, 1, input_size=2 if data.kind == "adding" else 1)


def batch_loss(kind: str, model, inputs: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"):
    """The training loss of one batch: MSE (adding, sine) or per-step cross-entropy (copy)."""
    output, _ = model(inputs)
    if kind == "copy":  # output [B, T, classes], targets [B, T]
        return F.cross_entropy(output.float().flatten(0, 1), targets.flatten(), reduction=reduction)
    return F.mse_loss(output.float().squeeze(-1), targets, reduction=reduction)  # output [B, 1], targets [B]


def evaluate_split(cfg, model, split: Split, device, amp_dtype=None) -> dict[str, float]:
    """Loss and metrics of a model on a whole split (mean over sequences, and over steps for copy)."""
    kind, copy_len = cfg.data.kind, cfg.data.copy_len
    sums = {"loss": 0.0, "abs": 0.0, "correct": 0, "exact": 0}
    with evaluating(model):
        for start in range(0, len(split), EVAL_BATCH):
            inputs = split.inputs[start:start + EVAL_BATCH].to(device)
            targets = split.targets[start:start + EVAL_BATCH].to(device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                output, _ = model(inputs)
            output = output.float()
            if kind == "copy":  # output [B, T, classes]
                sums["loss"] += float(F.cross_entropy(output.flatten(0, 1), targets.flatten(), reduction="sum"))
                hits = output[:, -copy_len:].argmax(-1) == targets[:, -copy_len:]  # [B, C]
                sums["correct"] += int(hits.sum())
                sums["exact"] += int(hits.all(dim=1).sum())
            else:  # output [B, 1]
                error = output.squeeze(-1) - targets
                sums["loss"] += float((error ** 2).sum())
                sums["abs"] += float(error.abs().sum())
    n = len(split)
    if kind == "copy":
        return {"loss": sums["loss"] / (n * cfg.data.seq_len), "accuracy": sums["correct"] / (n * copy_len),
                "sequence_accuracy": sums["exact"] / n}
    metrics = {"loss": sums["loss"] / n, "mse": sums["loss"] / n}
    if kind == "sine":
        metrics["mae"] = sums["abs"] / n
    return metrics


def split_baselines(cfg, split: Split, split_name: str) -> dict[str, float]:
    """{"<split>/<baseline>_<metric>": value}: what a predictor without memory scores on this split."""
    data = cfg.data
    if data.kind == "adding":
        scores = {"always_one_mse": always_one_mse(split)}
    elif data.kind == "copy":
        scores = {f"memoryless_{k}": v for k, v in memoryless_copy(split, data.copy_len, data.num_symbols).items()}
    else:
        scores = {f"naive_{k}": v for k, v in naive_last_value(split).items()}
    return {f"{split_name}/{name}": value for name, value in scores.items()}


def check_fingerprint(fingerprints: dict, split_name: str, split: Split) -> None:
    """The regenerated split must be the one the checkpoint's model saw (same numbers, bit for bit)."""
    expected = fingerprints.get(split_name)
    if expected is not None and expected != split.fingerprint():
        raise GrutrainError(
            f"the regenerated {split_name} split differs from the one this run used (this torch draws other "
            "random numbers from the same seed); its metrics would not be comparable. Use the torch version "
            "the run was trained with")


class SyntheticTask:
    name = "synthetic"
    sampler = None
    carries_state = False
    items_per_batch = 0

    def __init__(self, cfg, fingerprints: dict | None = None):
        check_data_config(cfg.data)
        self.cfg = cfg
        self.fingerprints = fingerprints or {}  # the splits a trained model saw, to check regenerated ones against
        self._splits: dict[str, Split] = {}

    @classmethod
    def from_config(cls, cfg, *, rows_per_step: int, saved: dict | None = None, rank: int = 0,
                    world_size: int = 1) -> "SyntheticTask":
        task = cls(cfg, (saved["task_state"].get("synthetic_data") if saved else None))
        train = task.split("train")
        task.sampler = ShuffledBatches(len(train), rows_per_step, seed=split_seed(cfg.train.seed, "shuffle"),
                                       make_batch=lambda idx: (train.inputs[idx], train.targets[idx]),
                                       rank=rank, world_size=world_size, what="sequences (data.train_size)")
        task.items_per_batch = task.sampler.global_batch * cfg.data.seq_len  # time steps
        for name in SPLITS:
            task.split(name)
        return task

    @classmethod
    def from_checkpoint(cls, cfg, task_state: dict) -> "SyntheticTask":
        fingerprints = task_state.get("synthetic_data")
        return cls(cfg, fingerprints if isinstance(fingerprints, dict) else None)

    def split(self, name: str) -> Split:
        """A split regenerated from the config and seed, checked against the one the run used."""
        if name not in self._splits:
            data = make_split(self.cfg.data, self.cfg.train.seed, name)
            check_fingerprint(self.fingerprints, name, data)
            self._splits[name] = data
        return self._splits[name]

    def build_model(self) -> SequenceModel:
        return build_model(self.cfg)

    def loss(self, model, batch, hidden):
        inputs, targets = batch
        return batch_loss(self.cfg.data.kind, model, inputs, targets), None

    def has_split(self, split: str) -> bool:
        return len(self.split(split)) > 0

    def _check_split(self, split: SplitName) -> str:
        if isinstance(split, Path):
            raise GrutrainError("--data does not apply to task synthetic: its splits are generated from the "
                                "checkpoint's config and seed; leave out --data and pick --split val or test")
        return split

    def evaluate(self, model, split: SplitName, device, amp_dtype=None, *,
                 whole: bool = True) -> dict[str, float]:  # whole: always (no cap here)
        return evaluate_split(self.cfg, model, self.split(self._check_split(split)), device, amp_dtype)

    def report(self, model, split: SplitName, device) -> dict:
        """Metrics of a trained model on its val or test split, regenerated from the checkpoint's config and seed."""
        data = self.split(self._check_split(split))
        metrics = self.evaluate(model, split, device)
        baselines = {f"baseline/{k.split('/', 1)[1]}": v for k, v in split_baselines(self.cfg, data, split).items()}
        return {"split": split, "kind": self.cfg.data.kind, "examples": len(data), **metrics, **baselines}

    def baselines(self) -> dict[str, float]:
        return {**split_baselines(self.cfg, self.split("val"), "val"),
                **split_baselines(self.cfg, self.split("test"), "test")}

    def state(self) -> dict:
        return {"synthetic_data": {name: self.split(name).fingerprint() for name in SPLITS}}

    def on_evaluation(self, model, device, step: int, logger) -> None:
        pass

    def final_extras(self, model, device) -> dict:
        return {}

    @staticmethod
    def export_io(model) -> nn.Module:
        return SequenceIO(model, "output")

    def usage(self) -> dict:
        return {"kind": self.cfg.data.kind,
                "preprocessing": "inputs as grutrain/tasks/synthetic/problems.py generates them for data.kind"}
