"""Synthetic sequence problems, generated in memory from a seed: adding, copy memory, noisy sine.

Every split is drawn from a torch.Generator of its own, seeded from (train.seed, split), never
from the global random state: the same seed gives the same data on any machine and in any
process, the splits never share examples by construction of their streams, and `grutrain eval`
regenerates a checkpoint's split from its config alone.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

from grutrain.errors import GrutrainError

SPLITS = ("train", "val", "test")
BLANK = 0  # copy task: the blank symbol; symbols are 1..num_symbols, the delimiter num_symbols + 1


@dataclass
class Split:
    """One split of a synthetic problem.

    adding: inputs [N, T, 2] float (value, marker), targets [N] float
    copy:   inputs [N, T] int64 tokens, targets [N, T] int64 classes (0 blank, 1..K symbols)
    sine:   inputs [N, T, 1] float, targets [N] float (the next noisy value)
    """

    inputs: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return len(self.targets)

    def fingerprint(self) -> str:
        """A short hash of the split's bytes: regenerating it must give exactly these numbers."""
        digest = hashlib.sha256()
        for t in (self.inputs, self.targets):
            digest.update(t.contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]


def split_seed(seed: int, split: str) -> int:
    """A 63-bit seed for one split's generator, derived from train.seed by hashing.

    Hashing (rather than seed + k) keeps the streams of (seed, split) pairs apart: seed 0's
    validation set is not seed 1's training set.
    """
    digest = hashlib.sha256(f"grutrain.synthetic/{seed}/{split}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator(seed: int, split: str) -> torch.Generator:
    return torch.Generator().manual_seed(split_seed(seed, split))


def copy_min_seq_len(copy_len: int) -> int:
    """copy_len symbols, a delimiter, then copy_len steps to recall them (no blank delay)."""
    return 2 * copy_len + 1


def check_data_config(data) -> None:
    """What the per-field config checks cannot see: impossible combinations for a kind."""
    if data.kind == "copy" and data.seq_len < copy_min_seq_len(data.copy_len):
        raise GrutrainError(
            f"data.seq_len={data.seq_len} is too short for the copy task with data.copy_len={data.copy_len}: "
            f"it needs {data.copy_len} symbols + 1 delimiter + {data.copy_len} recall steps, so set "
            f"data.seq_len >= {copy_min_seq_len(data.copy_len)} (or lower data.copy_len)")
    if data.kind == "adding" and data.seq_len < 2:  # the config already requires > 1; kept for direct callers
        raise GrutrainError(f"data.seq_len={data.seq_len} is too short for the adding problem: one marker goes in "
                            "each half of the sequence, so set data.seq_len >= 2")


def adding_problem(n: int, seq_len: int, gen: torch.Generator) -> Split:
    """The adding problem (Hochreiter & Schmidhuber 1997), in the convention of Le, Jaitly & Hinton
    (2015, "A simple way to initialize recurrent networks of rectified linear units", Sec. 4.1),
    also used by Arjovsky, Shah & Bengio (2016, "Unitary evolution recurrent neural networks").

    Each step has two features: a value drawn uniformly from [0, 1] and a marker (0 or 1).
    Exactly two steps are marked: one uniformly at random in the first half, positions
    [0, T // 2), and one in the second half, [T // 2, T). The target is the sum of the two
    marked values. Always answering 1.0 scores an expected MSE of Var(U1 + U2) = 2/12 = 0.167.
    (Hochreiter & Schmidhuber's original draws values from [-1, 1] and puts the first marker
    in the first ten steps; the halves convention is the one later papers report.)
    """
    half = seq_len // 2
    values = torch.rand(n, seq_len, generator=gen)  # [N, T]
    first = torch.randint(0, half, (n,), generator=gen)  # [N]
    second = torch.randint(half, seq_len, (n,), generator=gen)  # [N]
    markers = torch.zeros(n, seq_len)
    rows = torch.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    targets = values[rows, first] + values[rows, second]  # [N]
    return Split(torch.stack([values, markers], dim=-1), targets)


def copy_memory(n: int, seq_len: int, copy_len: int, num_symbols: int, gen: torch.Generator) -> Split:
    """The copy-memory task of Arjovsky, Shah & Bengio (2016, Sec. 4.1), with seq_len the whole length.

    Input tokens:  copy_len symbols drawn uniformly from 1..num_symbols, then
                   seq_len - 2 * copy_len - 1 blanks (0), a delimiter (num_symbols + 1), then
                   copy_len blanks.
    Target classes: blank (0) at every step but the last copy_len, which hold the symbols in order.
    (Arjovsky et al.'s T is the blank delay + 1: their length T + 20 is seq_len here with copy_len 10.)
    """
    symbols = torch.randint(1, num_symbols + 1, (n, copy_len), generator=gen)  # [N, C]
    inputs = torch.full((n, seq_len), BLANK, dtype=torch.long)
    inputs[:, :copy_len] = symbols
    inputs[:, seq_len - copy_len - 1] = num_symbols + 1  # the delimiter: "recall now"
    targets = torch.full((n, seq_len), BLANK, dtype=torch.long)
    targets[:, seq_len - copy_len:] = symbols
    return Split(inputs, targets)


# sine: each example is a sine wave of its own period and phase, plus Gaussian noise.
SINE_PERIODS = (10.0, 30.0)  # steps per cycle, drawn uniformly from this range


def noisy_sine(n: int, seq_len: int, noise: float, gen: torch.Generator) -> Split:
    """Windows of seq_len steps of sin(2 pi t / period + phase) + noise * N(0, 1); target: step seq_len's value.

    The period is uniform in SINE_PERIODS (10 to 30 steps), the phase uniform in [0, 2 pi), both per
    example; the target is the next noisy value, so the best possible MSE is noise ** 2.
    """
    period = SINE_PERIODS[0] + (SINE_PERIODS[1] - SINE_PERIODS[0]) * torch.rand(n, 1, generator=gen)  # [N, 1]
    phase = 2 * math.pi * torch.rand(n, 1, generator=gen)  # [N, 1]
    t = torch.arange(seq_len + 1, dtype=torch.float32)  # [T + 1]
    series = torch.sin(2 * math.pi * t / period + phase) + noise * torch.randn(n, seq_len + 1, generator=gen)
    return Split(series[:, :seq_len, None].contiguous(), series[:, seq_len].contiguous())


def make_split(data, seed: int, split: str) -> Split:
    """The `split` ("train", "val" or "test") of the problem a SyntheticDataConfig describes."""
    check_data_config(data)
    n = {"train": data.train_size, "val": data.val_size, "test": data.test_size}[split]
    gen = generator(seed, split)
    if data.kind == "adding":
        return adding_problem(n, data.seq_len, gen)
    if data.kind == "copy":
        return copy_memory(n, data.seq_len, data.copy_len, data.num_symbols, gen)
    if data.kind == "sine":
        return noisy_sine(n, data.seq_len, data.noise, gen)
    raise GrutrainError(f"data.kind: {data.kind!r} is not a synthetic problem; expected adding, copy or sine")


# ---- baselines: what a predictor without memory scores on the same split ----

def always_one_mse(split: Split) -> float:
    """adding: MSE of answering 1.0 (the mean target) for every sequence; expected 1/6 = 0.167."""
    return float(((split.targets - 1.0) ** 2).mean())


def naive_last_value(split: Split) -> dict[str, float]:
    """sine: MSE and MAE of predicting that the next value equals the last one seen."""
    error = split.inputs[:, -1, 0] - split.targets
    return {"mse": float((error ** 2).mean()), "mae": float(error.abs().mean())}


def memoryless_copy(split: Split, copy_len: int, num_symbols: int) -> dict[str, float]:
    """copy: the best strategy without memory -- blank with certainty until the recall steps, then a
    uniform guess over the symbols -- scored on the split's targets.

    Its cross-entropy per step is copy_len * log(num_symbols) / seq_len (Arjovsky et al. 2016) and its
    expected accuracy on the recalled symbols 1 / num_symbols.
    """
    seq_len = split.targets.shape[1]
    probs = torch.zeros(seq_len, num_symbols + 1, dtype=torch.float64)  # [T, classes]
    probs[: seq_len - copy_len, BLANK] = 1.0
    probs[seq_len - copy_len:, 1:] = 1.0 / num_symbols
    p_target = probs.expand(len(split), -1, -1).gather(2, split.targets.unsqueeze(-1))  # [N, T, 1]
    return {"cross_entropy": float(-p_target.log().mean()), "accuracy": 1.0 / num_symbols}
