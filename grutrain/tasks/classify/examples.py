"""Sequence classification data: splits, labels and encoding of the examples read by classify_files.

Text examples become character ids through a vocabulary built on the training split (`<unk>` = id 0).
Numeric series are normalised per channel with the training split's mean and standard deviation.
Missing values (.ts `?`) become that mean (0 after normalisation); steps at the end of an example
where every channel is missing are dropped as padding. The train/val/test split is stratified by
label and random under the seed, so each label keeps its share in every split.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence

from grutrain.tasks.classify.files import NUMERIC, TEXT, Examples, file_format, parse_float, read_examples
from grutrain.data.vocabulary import Vocabulary
from grutrain.data.timeseries import check_normalisation
from grutrain.errors import GrutrainError


# ---------------------------------------------------------------------------------------------
# Splits, labels, encoding
# ---------------------------------------------------------------------------------------------

def sort_labels(labels) -> list[str]:
    """Distinct labels, in numeric order when they are all numbers ("2" before "10"), else as text."""
    distinct = set(labels)
    numbers = {label: parse_float(label) for label in distinct}
    if all(v is not None for v in numbers.values()):
        return sorted(distinct, key=lambda label: (numbers[label], label))
    return sorted(distinct)


def stratified_split(labels: list[str], val_fraction: float, test_fraction: float,
                     seed: int) -> tuple[list[int], list[int], list[int]]:
    """(train, val, test) indices: within each label a random share by the fractions, under the seed.

    Each label gets round(n * fraction) examples in val and in test, but always keeps at least
    one for training, so every label met in val or test is one the model was trained on.
    """
    rng = random.Random(seed)
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    train, val, test = [], [], []
    for label in sorted(by_label):
        indices = by_label[label]
        rng.shuffle(indices)
        n = len(indices)
        n_test = math.floor(n * test_fraction + 0.5)
        n_val = math.floor(n * val_fraction + 0.5)
        while n_val + n_test > n - 1 and n_val + n_test > 0:  # keep one for training
            if n_test >= n_val:
                n_test -= 1
            else:
                n_val -= 1
        test += indices[:n_test]
        val += indices[n_test : n_test + n_val]
        train += indices[n_test + n_val :]
    return sorted(train), sorted(val), sorted(test)


class Encoder:
    """Raw examples -> model inputs, with what the training split fixed (stored in the checkpoint)."""

    def __init__(self, state: dict):
        self.kind = state["kind"]
        self.labels: list[str] = list(state["labels"])
        self.label_index = {label: i for i, label in enumerate(self.labels)}
        self.train_counts: list[int] = list(state["train_counts"])
        self.max_len = state.get("max_len")
        self.vocab = Vocabulary(list(state["vocab"])) if self.kind == TEXT else None
        self.channels = int(state.get("channels", 0))
        if self.kind == NUMERIC:
            self.mean = torch.tensor(state["mean"], dtype=torch.float64)  # [C]
            self.std = torch.tensor(state["std"], dtype=torch.float64)  # [C]

    @classmethod
    def fit(cls, train: Examples, max_len: int | None) -> "Encoder":
        labels = sort_labels(train.ys)
        counts = Counter(train.ys)
        state = {"kind": train.kind, "labels": labels, "train_counts": [counts[label] for label in labels],
                 "max_len": max_len, "channels": train.channels, "vocab": []}
        if train.kind == TEXT:
            state["vocab"] = Vocabulary.build([c for x in train.xs for c in x[:max_len]]).tokens
        else:
            steps = torch.cat([x[:max_len] for x in train.xs])  # [sum T, C]
            mean = torch.nanmean(steps, dim=0)  # [C]
            std = torch.nanmean((steps - mean) ** 2, dim=0).sqrt()
            # A channel that is constant (or never observed) is only centred.
            mean = torch.where(torch.isnan(mean), torch.zeros_like(mean), mean)
            std = torch.where(torch.isnan(std) | (std < 1e-12), torch.ones_like(std), std)
            check_normalisation(mean.numpy(), std.numpy(), "the training examples")
            state["mean"], state["std"] = mean.tolist(), std.tolist()
        return cls(state)

    def state(self) -> dict:
        state = {"kind": self.kind, "labels": self.labels, "train_counts": self.train_counts,
                 "max_len": self.max_len, "channels": self.channels,
                 "vocab": self.vocab.tokens if self.vocab is not None else []}
        if self.kind == NUMERIC:
            state["mean"], state["std"] = self.mean.tolist(), self.std.tolist()
        return state

    @property
    def input_description(self) -> str:
        return "text" if self.kind == TEXT else f"numeric series with {self.channels} channel(s)"

    def check_fits(self, examples: Examples) -> None:
        """Examples of the kind and channel count the model was trained on, or a GrutrainError."""
        if examples.kind != self.kind or (self.kind == NUMERIC and examples.channels != self.channels):
            got = "text" if examples.kind == TEXT else f"numeric series with {examples.channels} channel(s)"
            raise GrutrainError(f"{examples.source} holds {got} but the model was trained on "
                                f"{self.input_description} (mismatched dimensions)")

    def encode(self, examples: Examples) -> list[torch.Tensor]:
        """Text -> token ids [T] (long); series -> normalised values [T, C] (float32, missing = 0)."""
        self.check_fits(examples)
        if self.kind == TEXT:
            return [self.vocab.encode(list(x[: self.max_len])) for x in examples.xs]
        out = []
        for x in examples.xs:
            z = (x[: self.max_len] - self.mean) / self.std  # [T, C]
            out.append(torch.nan_to_num(z, nan=0.0).float())  # missing -> the training mean
        return out

    def label_ids(self, examples: Examples) -> torch.Tensor:
        """[N] class ids; a label the training split never had is a GrutrainError."""
        ids = []
        for y, where in zip(examples.ys, examples.where):
            if y is None:
                raise GrutrainError(f"{examples.source}: {where} has no label; every example needs one here")
            if y not in self.label_index:
                raise GrutrainError(f"{examples.source}: {where}: label {y!r} was never seen in training; "
                                    f"the model knows {_list(self.labels)}")
            ids.append(self.label_index[y])
        return torch.tensor(ids, dtype=torch.long)


def _list(labels: list[str], most: int = 20) -> str:
    shown = ", ".join(repr(label) for label in labels[:most])
    return shown + (f", ... ({len(labels)} labels)" if len(labels) > most else "")


@dataclass
class Split:
    """Encoded examples of one split: inputs (a list of [T] or [T, C] tensors) and class ids [N]."""

    xs: list
    ys: torch.Tensor
    lengths: torch.Tensor  # [N]

    def __len__(self) -> int:
        return len(self.xs)

    @classmethod
    def of(cls, xs: list, ys: torch.Tensor) -> "Split":
        return cls(xs, ys, torch.tensor([len(x) for x in xs], dtype=torch.long))

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inputs right-padded to the longest [B, T(, C)], lengths [B], labels [B])."""
        indices = [int(i) for i in indices]
        return pad_batch([self.xs[i] for i in indices]) + (self.ys[indices],)

    def packed(self) -> dict:
        """The split as plain tensors for a checkpoint: all steps concatenated, lengths, labels."""
        return {"x": torch.cat(self.xs) if self.xs else torch.zeros(0), "lengths": self.lengths, "y": self.ys}

    @classmethod
    def unpacked(cls, state: dict) -> "Split":
        lengths = state["lengths"].long()
        xs = list(torch.split(state["x"], lengths.tolist())) if len(lengths) else []
        return cls(xs, state["y"].long(), lengths)


def pad_batch(xs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(right-padded [B, T_max(, C)] with zeros, lengths [B])."""
    return pad_sequence(xs, batch_first=True), torch.tensor([len(x) for x in xs], dtype=torch.long)


@dataclass
class ClassifyData:
    encoder: Encoder
    splits: dict  # "train" | "val" | "test" -> Split


def load_classify_data(cfg, seed: int, state: dict | None = None) -> ClassifyData:
    """Read data.path, split it under the seed, and encode it (with `state`'s encoding on resume)."""
    examples = read_examples(cfg.path, file_format(cfg.path, cfg.format), label_column=cfg.label_column,
                             lowercase=cfg.lowercase, require_labels=True)
    parts = dict(zip(("train", "val", "test"),
                     stratified_split(examples.ys, cfg.val_fraction, cfg.test_fraction, seed)))
    subsets = {name: examples.subset(indices) for name, indices in parts.items()}
    encoder = Encoder(state) if state is not None else Encoder.fit(subsets["train"], cfg.max_len)
    splits = {name: Split.of(encoder.encode(s), encoder.label_ids(s)) for name, s in subsets.items()}
    return ClassifyData(encoder, splits)
