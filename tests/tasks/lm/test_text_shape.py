"""Text of any shape through the token cache: no newline at all, UTF-8 sequences cut by a block
boundary, no whitespace at all. The reference is the in-memory route: the whole text's splits, each
encoded at once by the same tokeniser. Blocks are small (a few KB) so a multi-MB file has hundreds."""

import random

import numpy as np
import pytest

import grutrain.tasks.lm.token_cache as token_cache
from grutrain.tasks.lm.token_cache import CacheSettings, block_cut, iter_text, open_corpus, split_bounds

BLOCK = 4099  # odd, so the boundaries fall inside multi-byte characters

WORDS = ["alice", "wonder", "café", "naïve", "Ünïcödé", "über", "日本語", "emoji😀x", "don't", "—", "1999", "x.y"]


def one_line_text(n_chars: int, seed: int = 0) -> str:
    """Words and punctuation separated by runs of 1-3 spaces or tabs, never a newline."""
    rng = random.Random(seed)
    parts, size = [], 0
    while size < n_chars:
        word = rng.choice(WORDS) + rng.choice(["", "", ",", "!"])
        gap = rng.choice([" ", " ", " ", "  ", "\t", " \t "])
        parts.append(word + gap)
        size += len(word) + len(gap)
    return "".join(parts)


def settings(tokenizer: str) -> CacheSettings:
    return CacheSettings(tokenizer=tokenizer, lowercase=False, val_fraction=0.1, test_fraction=0.1, vocab_size=300)


def assert_equals_in_memory(path, text: str, corpus) -> None:
    for name, lo, hi in split_bounds(len(text), 0.1, 0.1):
        expected = corpus.tokenizer.encode(text[lo:hi])
        assert np.array_equal(np.asarray(corpus.split(name), dtype=np.int64), expected), name
        assert corpus.chars[name] == hi - lo


@pytest.mark.parametrize("tokenizer,n_chars", [("char", 2_500_000), ("bytes", 2_500_000), ("word", 300_000),
                                               ("bpe", 300_000)])
def test_a_file_without_newlines_gives_the_tokens_of_the_in_memory_route(tmp_path, monkeypatch, tokenizer, n_chars):
    monkeypatch.setattr(token_cache, "BLOCK_BYTES", BLOCK)
    text = one_line_text(n_chars)
    path = tmp_path / "one-line.txt"
    path.write_text(text, encoding="utf-8")
    assert "\n" not in text and path.stat().st_size > n_chars  # multi-byte characters
    corpus = open_corpus(path, settings(tokenizer), tmp_path / "cache")
    assert_equals_in_memory(path, text, corpus)


def test_text_without_any_whitespace_is_cut_anyway_and_reads_in_bounded_blocks(tmp_path):
    rng = random.Random(1)
    text = "".join(rng.choice("aé😀日b") for _ in range(600_000))  # 1-4 byte characters, no space, no newline
    path = tmp_path / "no-space.txt"
    path.write_text(text, encoding="utf-8")
    blocks = list(iter_text(path, lowercase=False, block_bytes=BLOCK))
    assert "".join(blocks) == text
    assert len(blocks) > 100 and max(len(b) for b in blocks) <= 2 * BLOCK  # memory: about a block, not the line


def test_char_tokens_of_a_text_without_whitespace_equal_the_in_memory_route(tmp_path, monkeypatch):
    monkeypatch.setattr(token_cache, "BLOCK_BYTES", BLOCK)
    rng = random.Random(2)
    text = "".join(rng.choice("aé😀日b\r") for _ in range(300_000))  # lone \r become \n, maybe cut after one
    path = tmp_path / "no-space.txt"
    path.write_bytes(text.encode("utf-8"))
    corpus = open_corpus(path, settings("char"), tmp_path / "cache")
    assert_equals_in_memory(path, text.replace("\r", "\n"), corpus)


@pytest.mark.parametrize("text,cut", [
    ("one two three", 7),  # before the space that precedes the last word
    ("one two   three  ", 9),  # trailing whitespace waits; the run's last space goes with the word
    ("nospace", 7), (" leading", 8), ("", 0), ("   ", 3),
    ("a\n\n  b", 4),
])
def test_block_cut(text, cut):
    assert block_cut(text) == cut
