"""Tokenisers of the language-model task: char, word, bytes and byte-level BPE.

Each one turns a block of text into a numpy array of ids and back, and serialises to plain
JSON-able data (`state()`), so it travels inside the checkpoint (read with
torch.load(weights_only=True)) and in the token cache's metadata; `from_state` rebuilds it.

- char:  one id per character; vocabulary from the training block, most frequent first, id 0 = <unk>.
         Encoding is a numpy lookup table indexed by code point, not a Python loop.
- word:  words and punctuation (regex), vocabulary as for char (data.min_freq applies).
- bytes: the UTF-8 bytes of the text: 256 ids, nothing unknown, nothing to train.
- bpe:   byte-level BPE of the `tokenizers` library, trained on the training block to
         data.vocab_size ids, or loaded from a tokenizer.json (data.tokenizer_path).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Iterable

import numpy as np

from grutrain.data.vocabulary import UNK
from grutrain.errors import GrutrainError


_WORD_RE = re.compile(r"\w+|[^\w\s]")


def _ranked(counts: dict[str, int], min_freq: int) -> list[str]:
    # Most frequent first, ties broken by the token itself, so the ids are reproducible.
    return [UNK] + sorted((t for t, c in counts.items() if c >= min_freq and t != UNK), key=lambda t: (-counts[t], t))


class CharTokenizer:
    kind = "char"
    unk_id: int | None = 0

    def __init__(self, tokens: list[str]):
        self.tokens = tokens
        points = np.array([ord(t) for t in tokens[1:]], dtype=np.int64)
        self._table = np.zeros(int(points.max()) + 2 if len(points) else 1, dtype=np.uint32)  # code point -> id
        self._table[points] = np.arange(1, len(tokens))

    @classmethod
    def train(cls, counts: Counter, min_freq: int = 1) -> "CharTokenizer":
        return cls(_ranked(counts, min_freq))

    @staticmethod
    def count(text: str) -> Counter:
        counts = np.bincount(_code_points(text))  # a histogram, not a sort: linear in the text
        return Counter({chr(int(p)): int(counts[p]) for p in np.flatnonzero(counts)})

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> np.ndarray:
        # Code points past the table's end land on its last entry, which is 0 (<unk>).
        return self._table[np.minimum(_code_points(text), len(self._table) - 1)]

    def decode(self, ids) -> str:
        return "".join(self.tokens[int(i)] for i in ids)

    def state(self) -> dict:
        return {"kind": self.kind, "tokens": self.tokens}


class WordTokenizer(CharTokenizer):
    kind = "word"

    def __init__(self, tokens: list[str]):
        self.tokens = tokens
        self.index = {t: i for i, t in enumerate(tokens)}

    @staticmethod
    def count(text: str) -> Counter:
        return Counter(_WORD_RE.findall(text))

    def encode(self, text: str) -> np.ndarray:
        index = self.index
        return np.fromiter((index.get(t, 0) for t in _WORD_RE.findall(text)), dtype=np.int64)

    def decode(self, ids) -> str:
        return " ".join(self.tokens[int(i)] for i in ids)


class ByteTokenizer:
    kind = "bytes"
    unk_id: int | None = None
    vocab_size = 256
    tokens = [f"<0x{b:02X}>" for b in range(256)]

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def state(self) -> dict:
        return {"kind": self.kind}


class BpeTokenizer:
    kind = "bpe"
    unk_id: int | None = None  # byte-level: every text has an encoding

    def __init__(self, tokenizer_json: str):
        from tokenizers import Tokenizer

        try:
            self._tok = Tokenizer.from_str(tokenizer_json)
        except Exception as exc:  # the library raises its own Exception type for a bad file
            raise GrutrainError(f"not a tokenizers tokenizer.json: {str(exc).splitlines()[0][:160]}") from None
        self._json = tokenizer_json
        self.vocab_size = self._tok.get_vocab_size()
        self.tokens = [self._tok.id_to_token(i) or "" for i in range(self.vocab_size)]

    @classmethod
    def train(cls, blocks: Iterable[str], vocab_size: int) -> "BpeTokenizer":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        tok.train_from_iterator(_lines(blocks), trainer)
        return cls(tok.to_str())

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text).ids, dtype=np.int64)

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids])

    def state(self) -> dict:
        return {"kind": self.kind, "tokenizer_json": self._json}


def _lines(blocks: Iterable[str]):
    for block in blocks:
        yield from block.splitlines(keepends=True)


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def load_bpe_file(path: str) -> BpeTokenizer:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        json.loads(text)
    except (OSError, ValueError) as exc:
        raise GrutrainError(f"data.tokenizer_path {path!r} is not a readable tokenizer.json ({exc}); "
                            "give a file saved by tokenizers' Tokenizer.save") from None
    try:
        return BpeTokenizer(text)
    except GrutrainError as exc:
        raise GrutrainError(f"data.tokenizer_path {path!r}: {exc}") from None


def from_state(state: dict):
    """The tokeniser a state() describes; a GrutrainError when the data is not one."""
    kind = state.get("kind") if isinstance(state, dict) else None
    if kind in ("char", "word"):
        tokens = state.get("tokens")
        if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
            raise GrutrainError(f"the {kind} tokeniser has no vocabulary (a list of strings)")
        return CharTokenizer(tokens) if kind == "char" else WordTokenizer(tokens)
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "bpe" and isinstance(state.get("tokenizer_json"), str):
        return BpeTokenizer(state["tokenizer_json"])
    raise GrutrainError(f"unknown tokeniser {kind!r}; expected char, word, bytes or bpe")


def tokenizer_from_task_state(task_state: dict, kind: str):
    """The tokeniser a language model's checkpoint was trained with (task_state["tokenizer"]); checkpoints
    written before it was kept have a char or word tokeniser (`kind`, the config's) of task_state["vocab"]."""
    vocab = task_state.get("vocab")
    if not isinstance(vocab, list) or not vocab or not all(isinstance(t, str) for t in vocab):
        raise GrutrainError("the checkpoint is damaged: it has no vocabulary (a list of strings)")
    state = task_state.get("tokenizer")
    if state is None:
        state = {"kind": kind, "tokens": vocab}
    try:
        tokenizer = from_state(state)
    except GrutrainError as exc:
        raise GrutrainError(f"the checkpoint is damaged: {exc}") from None
    if tokenizer.vocab_size != len(vocab):
        raise GrutrainError("the checkpoint is damaged: its vocabulary and its tokeniser differ in size")
    return tokenizer
