"""The tokeniser registry: one module per tokeniser, each trained, saved and rebuilt the same way, and the
config's data.tokenizer choices are the registry's names."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from grutrain.errors import GrutrainError
from grutrain.tasks.lm import text, tokenizers
from grutrain.tasks.lm.config import TextDataConfig
from grutrain.tasks.lm.tokenizers import TOKENIZERS, from_state, tokenizer_class
from grutrain.tasks.lm.tokenizers.word import WORD_RE

TRAINING = ["Alice was beginning to get very tired of sitting by her sister on the bank,\n",
            "and of having nothing to do: once or twice she had peeped into the book.\n"] * 20
SETTINGS = SimpleNamespace(min_freq=1, vocab_size=300, tokenizer_path=None)


@pytest.mark.parametrize("kind", list(TOKENIZERS))
def test_each_tokenizer_trains_saves_and_comes_back(kind):
    cls = tokenizer_class(kind)
    assert cls.kind == kind and cls.__module__ == f"grutrain.tasks.lm.tokenizers.{kind}"
    trained = tokenizers.train(kind, lambda: iter(TRAINING), SETTINGS)
    again = from_state(trained.state())
    assert again.state() == trained.state() and again.state()["kind"] == kind
    assert again.tokens == trained.tokens and again.vocab_size == trained.vocab_size == len(trained.tokens)
    ids = trained.encode("Alice was tired")
    assert list(again.encode("Alice was tired")) == list(ids) and all(0 <= i < trained.vocab_size for i in ids)
    assert trained.unit and trained.splitting  # for figures and export's usage
    generated = trained.encode(" sitting")
    continued = trained.extend("Alice", generated)
    assert continued.startswith("Alice") and "sitting" in continued


def test_the_config_offers_the_registered_tokenizers():
    assert TextDataConfig.model_fields["tokenizer"].annotation.__args__ == tuple(TOKENIZERS)


def test_an_unknown_tokenizer_state_is_one_line():
    with pytest.raises(GrutrainError) as info:
        from_state({"kind": "sentencepiece"})
    message = str(info.value)
    assert message.startswith("unknown tokeniser 'sentencepiece'; expected char, word, bytes")
    assert "\n" not in message and all(kind in message for kind in TOKENIZERS)


def test_words_are_split_by_one_expression():
    assert text.tokenize("It's me.", "word") == WORD_RE.findall("It's me.") == ["It", "'", "s", "me", "."]
