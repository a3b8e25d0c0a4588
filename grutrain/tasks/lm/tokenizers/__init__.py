"""Tokenisers of the language-model task: one module each here, one line each in TOKENIZERS.

A tokeniser turns a block of text into a numpy array of ids and back, and serialises to plain
JSON-able data (`state()`), so it travels inside the checkpoint (read with torch.load(weights_only=True))
and in the token cache's metadata; `from_state` rebuilds it. The token cache makes one per corpus with
`train`, from the corpus's training block.

- char:  one id per character; vocabulary from the training block, most frequent first, id 0 = <unk>.
- word:  words and punctuation (regex), vocabulary as for char (data.min_freq applies).
- bytes: the UTF-8 bytes of the text: 256 ids, nothing unknown, nothing to train.
- bpe:   byte-level BPE of the `tokenizers` library, trained on the training block to
         data.vocab_size ids, or loaded from a tokenizer.json (data.tokenizer_path).

This module imports no tokeniser until one is asked for: the config reads TOKENIZERS for the choices of
data.tokenizer.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable, Iterable, Protocol

from grutrain.errors import GrutrainError

if TYPE_CHECKING:
    import numpy as np

# data.tokenizer -> the class in the module of that name here.
TOKENIZERS = {
    "char": "CharTokenizer",
    "word": "WordTokenizer",
    "bytes": "ByteTokenizer",
    "bpe": "BpeTokenizer",
}


class Tokenizer(Protocol):
    kind: str  # its name in TOKENIZERS (data.tokenizer); state()["kind"]
    unit: str  # what one token is, in messages and figures: "character", "word", "byte", "token"
    splitting: str  # how text becomes tokens, for export's usage JSON
    unk_id: int | None  # the id text outside the vocabulary gets; None: every text has an encoding
    vocab_size: int
    tokens: list[str]  # the text of each id (export's vocab; checkpoints' vocab)

    @classmethod
    def train(cls, blocks: Callable[[], Iterable[str]], settings) -> "Tokenizer":
        """One for a corpus: `blocks()` yields the training block's text, once per call; `settings` (the
        token cache's CacheSettings) holds data.min_freq, data.vocab_size and data.tokenizer_path."""

    @classmethod
    def from_state(cls, state: dict) -> "Tokenizer":
        """The tokeniser a state() describes; a GrutrainError when the data is not one."""

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids) -> str: ...

    def extend(self, prompt: str, ids) -> str:
        """The prompt followed by the text of `ids` (what `grutrain sample` prints)."""

    def state(self) -> dict: ...


def tokenizer_class(kind: str) -> type[Tokenizer]:
    return getattr(importlib.import_module(f"{__name__}.{kind}"), TOKENIZERS[kind])


def _listed() -> str:
    kinds = list(TOKENIZERS)
    return f"{', '.join(kinds[:-1])} or {kinds[-1]}"


def train(kind: str, blocks: Callable[[], Iterable[str]], settings) -> Tokenizer:
    return tokenizer_class(kind).train(blocks, settings)


def from_state(state: dict) -> Tokenizer:
    """The tokeniser a state() describes; a GrutrainError when the data is not one."""
    kind = state.get("kind") if isinstance(state, dict) else None
    if not isinstance(kind, str) or kind not in TOKENIZERS:
        raise GrutrainError(f"unknown tokeniser {kind!r}; expected {_listed()}")
    return tokenizer_class(kind).from_state(state)


def tokenizer_from_task_state(task_state: dict, kind: str) -> Tokenizer:
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
