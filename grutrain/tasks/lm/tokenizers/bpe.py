"""bpe: byte-level BPE of the `tokenizers` library, trained on the training block to data.vocab_size ids,
or loaded from a tokenizer.json (data.tokenizer_path). Its state is the tokenizer.json text."""

from __future__ import annotations

import json
from typing import Iterable

import numpy as np

from grutrain.errors import GrutrainError


class BpeTokenizer:
    kind = "bpe"
    unit = "token"
    splitting = "the byte-level BPE of `tokenizer_json` (Hugging Face tokenizers' Tokenizer.from_str)"
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
    def train(cls, blocks, settings) -> "BpeTokenizer":
        if settings.tokenizer_path:
            return load_bpe_file(settings.tokenizer_path)
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=settings.vocab_size,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(_lines(blocks()), trainer)
        return cls(tok.to_str())

    @classmethod
    def from_state(cls, state: dict) -> "BpeTokenizer":
        if not isinstance(state.get("tokenizer_json"), str):
            raise GrutrainError("the bpe tokeniser has no tokenizer_json (the text of a tokenizer.json)")
        return cls(state["tokenizer_json"])

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text).ids, dtype=np.int64)

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids])

    def extend(self, prompt: str, ids) -> str:
        return prompt + self.decode(ids)

    def state(self) -> dict:
        return {"kind": self.kind, "tokenizer_json": self._json}


def _lines(blocks: Iterable[str]):
    for block in blocks:
        yield from block.splitlines(keepends=True)


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
