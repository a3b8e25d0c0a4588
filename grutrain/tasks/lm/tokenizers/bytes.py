"""bytes: the UTF-8 bytes of the text: 256 ids, nothing unknown, nothing to train."""

from __future__ import annotations

import numpy as np


class ByteTokenizer:
    kind = "bytes"
    unit = "byte"
    splitting = "the UTF-8 bytes of the text (ids 0-255, no <unk>)"
    unk_id: int | None = None
    vocab_size = 256
    tokens = [f"<0x{b:02X}>" for b in range(256)]

    @classmethod
    def train(cls, blocks, settings) -> "ByteTokenizer":
        return cls()

    @classmethod
    def from_state(cls, state: dict) -> "ByteTokenizer":
        return cls()

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def extend(self, prompt: str, ids) -> str:
        return prompt + self.decode(ids)

    def state(self) -> dict:
        return {"kind": self.kind}
