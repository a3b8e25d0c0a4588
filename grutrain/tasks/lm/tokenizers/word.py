"""word: runs of word characters and single punctuation marks; the vocabulary as for char (data.min_freq
applies), id 0 = <unk>; decoded with a space between tokens."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

from grutrain.tasks.lm.tokenizers.char import CharTokenizer

WORD_RE = re.compile(r"\w+|[^\w\s]")


class WordTokenizer(CharTokenizer):
    kind = "word"
    unit = "word"
    splitting = "\\w+ runs and single punctuation marks"

    def __init__(self, tokens: list[str]):
        self.tokens = tokens
        self.index = {t: i for i, t in enumerate(tokens)}

    @staticmethod
    def count(text: str) -> Counter:
        return Counter(WORD_RE.findall(text))

    def encode(self, text: str) -> np.ndarray:
        index = self.index
        return np.fromiter((index.get(t, 0) for t in WORD_RE.findall(text)), dtype=np.int64)

    def decode(self, ids) -> str:
        return " ".join(self.tokens[int(i)] for i in ids)

    def extend(self, prompt: str, ids) -> str:
        # The prompt's words as written (even those the vocabulary lacks), spaced like the decoded ones.
        return " ".join(WORD_RE.findall(prompt) + [self.tokens[int(i)] for i in ids])
