"""Token <-> id for the tasks that read text (lm's char and word tokenisers, classify's names)."""

from __future__ import annotations

from collections import Counter

import torch

UNK = "<unk>"


class Vocabulary:
    """Token <-> id, with id 0 reserved for tokens never seen in training."""

    def __init__(self, tokens: list[str]):
        if not tokens or tokens[0] != UNK:
            tokens = [UNK] + [t for t in tokens if t != UNK]
        self.tokens = tokens
        self.index = {t: i for i, t in enumerate(tokens)}

    @classmethod
    def build(cls, tokens: list[str], min_freq: int = 1) -> "Vocabulary":
        counts = Counter(tokens)
        # Most frequent first, ties broken by the token itself, so the ids are reproducible.
        kept = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
        return cls([UNK] + kept)

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, tokens: list[str]) -> torch.Tensor:
        return torch.tensor([self.index.get(t, 0) for t in tokens], dtype=torch.long)

    def decode(self, ids) -> list[str]:
        return [self.tokens[int(i)] for i in ids]
