"""char: one id per character; the vocabulary from the training block, most frequent first, id 0 = <unk>.

Encoding is a numpy lookup table indexed by code point, not a Python loop.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from grutrain.data.vocabulary import UNK
from grutrain.errors import GrutrainError


def ranked(counts: dict[str, int], min_freq: int) -> list[str]:
    """<unk>, then the tokens seen at least min_freq times, most frequent first, ties broken by the token
    itself, so the ids are reproducible."""
    return [UNK] + sorted((t for t, c in counts.items() if c >= min_freq and t != UNK), key=lambda t: (-counts[t], t))


def vocabulary_of(state: dict, kind: str) -> list[str]:
    tokens = state.get("tokens")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise GrutrainError(f"the {kind} tokeniser has no vocabulary (a list of strings)")
    return tokens


class CharTokenizer:
    kind = "char"
    unit = "character"
    splitting = "every character"
    unk_id: int | None = 0

    def __init__(self, tokens: list[str]):
        self.tokens = tokens
        points = np.array([ord(t) for t in tokens[1:]], dtype=np.int64)
        self._table = np.zeros(int(points.max()) + 2 if len(points) else 1, dtype=np.uint32)  # code point -> id
        self._table[points] = np.arange(1, len(tokens))

    @classmethod
    def train(cls, blocks, settings) -> "CharTokenizer":
        counts: Counter = Counter()
        for text in blocks():
            counts.update(cls.count(text))
        return cls(ranked(counts, settings.min_freq))

    @classmethod
    def from_state(cls, state: dict) -> "CharTokenizer":
        return cls(vocabulary_of(state, cls.kind))

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

    def extend(self, prompt: str, ids) -> str:
        return prompt + self.decode(ids)  # the prompt as written, even its characters the vocabulary lacks

    def state(self) -> dict:
        return {"kind": self.kind, "tokens": self.tokens}


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
