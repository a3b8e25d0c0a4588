"""Character- (or word-) level text: reading, vocabulary, splits and batches of token windows.

The two sampling schemes of d2l.ai's RNN chapters:
- random: each epoch starts at a random offset, cuts the training split into windows of
  `seq_len` tokens and visits them in a shuffled order; batches are independent.
- sequential: each epoch starts at a random offset, lays the split out as `batch_size` parallel
  streams and walks them left to right, so batch k+1 continues batch k row by row and the
  hidden state can be carried across batches (truncated BPTT).

The sampler's position (epoch, batch within the epoch, generator state at the epoch's start)
is part of every checkpoint, so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from grutrain.data.batching import EpochSampler
from grutrain.data.vocabulary import UNK, Vocabulary
from grutrain.errors import GrutrainError
from grutrain.files.inputs import read_input
from grutrain.tasks.lm.config import TextDataConfig
from grutrain.tasks.lm.tokenizers.word import WORD_RE


def read_text_file(path: str | Path) -> str:
    """The file's text with universal newlines, or a GrutrainError saying what is wrong."""
    path = Path(path)
    if path.is_dir():
        raise GrutrainError(f"data.path {str(path)!r} is a directory; give a UTF-8 text file")
    if not path.exists():
        raise GrutrainError(f"data file {str(path)!r} not found; check data.path (e.g. data/alice29.txt)")
    raw = read_input(path, "data file")  # a regular file that fits in memory
    if not raw.strip():
        raise GrutrainError(f"data file {str(path)!r} is empty; give a UTF-8 text file with some text in it")
    if b"\x00" in raw[:65536]:
        raise GrutrainError(f"data file {str(path)!r} looks binary (it contains NUL bytes); give a UTF-8 text file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise GrutrainError(
            f"data file {str(path)!r} is not UTF-8 (bad byte at offset {exc.start}); convert it to UTF-8"
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def tokenize(text: str, tokenizer: str, lowercase: bool = False) -> list[str]:
    if lowercase:
        text = text.lower()
    if tokenizer == "char":
        return list(text)
    return WORD_RE.findall(text)


@dataclass
class TextSplits:
    vocab: Vocabulary
    train: torch.Tensor  # [N_train] token ids
    val: torch.Tensor  # [N_val]
    test: torch.Tensor  # [N_test]


def split_by_position(n: int, val_fraction: float, test_fraction: float) -> tuple[slice, slice, slice]:
    """Contiguous blocks [train | val | test], so no text leaks between them."""
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    n_train = n - n_val - n_test
    return slice(0, n_train), slice(n_train, n_train + n_val), slice(n_train + n_val, n)


def load_text_splits(cfg: TextDataConfig, vocab: Vocabulary | None = None, path: str | None = None) -> TextSplits:
    """Tokenise the file and split it; the vocabulary comes from the training block unless given."""
    text = read_text_file(path or cfg.path)
    tokens = tokenize(text, cfg.tokenizer, cfg.lowercase)
    train_s, val_s, test_s = split_by_position(len(tokens), cfg.val_fraction, cfg.test_fraction)
    if vocab is None:
        vocab = Vocabulary.build(tokens[train_s], cfg.min_freq)
        if len(vocab.tokens) < 2:  # only <unk>: nothing to predict or to sample
            raise GrutrainError(f"data.min_freq {cfg.min_freq} leaves no token in the vocabulary but {UNK} "
                                f"(no token occurs that often in {str(path or cfg.path)!r}); lower data.min_freq")
    ids = vocab.encode(tokens)
    return TextSplits(vocab, ids[train_s], ids[val_s], ids[test_s])


class WindowSampler(EpochSampler):
    """Batches of (inputs, targets), each [batch_size, seq_len], by one of d2l's two schemes.

    The number of batches per epoch does not depend on the random offset, so `epochs` maps to a
    fixed number of steps.
    """

    def __init__(self, tokens: torch.Tensor, seq_len: int, batch_size: int, scheme: str, seed: int,
                 rank: int = 0, world_size: int = 1):
        self.tokens = as_numpy(tokens)  # an in-memory array or a numpy.memmap of the token cache
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.scheme = scheme
        # Under DDP every rank draws the same global batch of batch_size * world_size rows from
        # the same generator and keeps its own slice of rows, so N processes with batch B/N see
        # exactly what one process with batch B sees.
        self.rows = slice(rank * batch_size, (rank + 1) * batch_size)
        global_batch = batch_size * world_size
        self.global_batch = global_batch
        n = len(tokens)
        if scheme == "random":
            # Windows that fit for every offset in [0, seq_len): targets need one token more.
            self.num_windows = (n - seq_len) // seq_len
            self.batches_per_epoch = self.num_windows // global_batch
        else:
            self.stream_len = (n - seq_len) // global_batch
            self.batches_per_epoch = self.stream_len // seq_len
        if self.batches_per_epoch < 1:
            need = seq_len * global_batch + seq_len + 1
            batch = f"train.batch_size={batch_size}" + (f" x {world_size} processes" if world_size > 1 else "")
            raise GrutrainError(
                f"the training split has {n} tokens, too few for one batch of {batch} x data.seq_len={seq_len} "
                f"(needs about {need}); lower them or use a longer data file"
            )
        self._begin(seed)

    def _draw_epoch(self) -> None:
        offset = int(torch.randint(0, self.seq_len, (1,), generator=self.generator))
        if self.scheme == "random":
            # = (offset + seq_len * arange(num_windows))[perm], without the two arrays of every window
            self._starts = offset + self.seq_len * torch.randperm(self.num_windows, generator=self.generator)
        else:
            length = self.stream_len * self.global_batch
            # Views of the memmap: nothing is read until a batch slices them.
            self._inputs = self.tokens[offset : offset + length].reshape(self.global_batch, -1)[self.rows]
            self._targets = self.tokens[offset + 1 : offset + 1 + length].reshape(self.global_batch, -1)[self.rows]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """(inputs, targets, starts_epoch); starts_epoch says a carried hidden state must be reset."""
        k, starts_epoch = self._take_position()
        L, G = self.seq_len, self.global_batch
        if self.scheme == "random":
            starts = self._starts[k * G : (k + 1) * G][self.rows]
            idx = (starts[:, None] + torch.arange(L)).numpy()  # [B, L]
            inputs, targets = self.tokens[idx], self.tokens[idx + 1]
        else:
            inputs = self._inputs[:, k * L : (k + 1) * L]
            targets = self._targets[:, k * L : (k + 1) * L]
        return long_tensor(inputs), long_tensor(targets), starts_epoch


def as_numpy(tokens) -> np.ndarray:
    return tokens.cpu().numpy() if isinstance(tokens, torch.Tensor) else tokens


def long_tensor(ids: np.ndarray) -> torch.Tensor:
    """Token ids (uint8/16/32 from the cache) as the int64 tensor embeddings and losses take."""
    return torch.from_numpy(np.asarray(ids, dtype=np.int64))


def eval_streams(tokens, seq_len: int, max_streams: int, max_tokens: int | None = None, seed: int = 0):
    """Yield (inputs, targets, rows) chunks covering every target token of a split exactly once.

    The split is laid out as S parallel streams read left to right, so the hidden state is
    carried through each stream and every prediction has the context before it. `rows` says
    which rows of the carried state a chunk continues: all of them, except for the few tokens
    left over after the last stream, which continue that stream alone.

    With `max_tokens` below the split's size only about that many targets are read: S stretches
    at seeded offsets, one in each S-th of the split, the same ones every time (comparable curves).
    """
    tokens = as_numpy(tokens)
    n = len(tokens) - 1  # number of targets
    if max_tokens is not None and n > max_tokens:
        yield from _capped_streams(tokens, n, seq_len, max_streams, max_tokens, seed)
        return
    streams = max(1, min(max_streams, n // seq_len))
    length = n // streams
    inputs = tokens[: streams * length].reshape(streams, length)
    targets = tokens[1 : streams * length + 1].reshape(streams, length)
    for start in range(0, length, seq_len):
        yield long_tensor(inputs[:, start : start + seq_len]), long_tensor(targets[:, start : start + seq_len]), slice(None)
    tail = streams * length
    if tail < n:
        yield long_tensor(tokens[tail:n][None]), long_tensor(tokens[tail + 1 : n + 1][None]), slice(streams - 1, streams)


def _capped_streams(tokens: np.ndarray, n: int, seq_len: int, max_streams: int, max_tokens: int, seed: int):
    streams = max(1, min(max_streams, max_tokens // seq_len))
    length = max(1, max_tokens // streams)
    stretch = n // streams
    generator = torch.Generator().manual_seed(seed)
    offsets = torch.randint(0, max(stretch - length, 0) + 1, (streams,), generator=generator)
    starts = [i * stretch + int(o) for i, o in enumerate(offsets)]
    inputs = np.stack([tokens[s : s + length] for s in starts])  # [S, length]: only these are read
    targets = np.stack([tokens[s + 1 : s + length + 1] for s in starts])
    for start in range(0, length, seq_len):
        yield long_tensor(inputs[:, start : start + seq_len]), long_tensor(targets[:, start : start + seq_len]), slice(None)


def bigram_perplexity(train, split, vocab_size: int) -> float:
    """Perplexity of an add-one smoothed bigram model fitted on train, scored on split."""
    train, split = as_numpy(train).astype(np.int64), as_numpy(split).astype(np.int64)
    counts = 1.0 + np.bincount(train[:-1] * vocab_size + train[1:], minlength=vocab_size * vocab_size)
    counts = counts.reshape(vocab_size, vocab_size)
    log_probs = np.log(counts / counts.sum(1, keepdims=True))
    nll = -log_probs[split[:-1], split[1:]].mean()
    return float(np.exp(nll))
