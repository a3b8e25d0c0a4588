"""Text data: reading, tokenising, vocabulary, splits, the two window samplers, eval streams, bigram baseline.

Samplers are fed `torch.arange(n)`, so every token's value is its position and each batch can be
checked against the text it must have come from.
"""

from __future__ import annotations

import io
import math

import pytest
import torch

from grutrain.tasks.lm.config import TextDataConfig
from grutrain.data.vocabulary import UNK, Vocabulary
from grutrain.tasks.lm.text import (
    WindowSampler,
    bigram_perplexity,
    eval_streams,
    load_text_splits,
    read_text_file,
    split_by_position,
    tokenize,
)
from grutrain.errors import GrutrainError

# --------------------------------------------------------------------------- reading


@pytest.mark.parametrize("content, words", [
    (None, ["not found"]),
    (b"", ["empty"]),
    (b"  \n\t\r\n  ", ["empty"]),
    (b"abc\x00def\x00" * 10, ["binary"]),
    ("caf\xe9 au lait\n".encode("latin-1"), ["UTF-8"]),
], ids=["missing", "empty", "whitespace", "binary", "latin1"])
def test_read_text_file_errors_name_the_path(tmp_path, content, words):
    path = tmp_path / "data file.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(GrutrainError) as info:
        read_text_file(path)
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message


def test_read_text_file_refuses_a_directory(tmp_path):
    with pytest.raises(GrutrainError, match="directory") as info:
        read_text_file(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_read_text_file_normalises_newlines_and_bom(tmp_path):
    path = tmp_path / "dos.txt"
    path.write_bytes(b"\xef\xbb\xbfone\r\ntwo\rthree\nfour\r\n")
    assert read_text_file(path) == "one\ntwo\nthree\nfour\n"


def test_read_text_file_keeps_unicode(tmp_path):
    text = "Caf\u00e9 \u2014 \u00fcber \u4e2d\u6587\n"
    path = tmp_path / "u.txt"
    path.write_text(text, encoding="utf-8")
    assert read_text_file(path) == text


# --------------------------------------------------------------------------- tokens and vocabulary


def test_tokenize_char_and_word():
    assert tokenize("Hi, yo!", "char") == ["H", "i", ",", " ", "y", "o", "!"]
    assert tokenize("Hello, world!  It's\nme.", "word") == ["Hello", ",", "world", "!", "It", "'", "s", "me", "."]
    assert tokenize("AbC", "char", lowercase=True) == ["a", "b", "c"]
    assert tokenize("The CAT", "word", lowercase=True) == ["the", "cat"]


def test_vocabulary_unk_is_zero_and_frequency_order():
    vocab = Vocabulary.build(list("abracadabra"))  # a:5 b:2 r:2 c:1 d:1
    assert vocab.tokens[0] == UNK
    assert vocab.tokens == [UNK, "a", "b", "r", "c", "d"]  # ties broken by the token itself
    assert len(vocab) == 6
    assert vocab.encode(list("zaq")).tolist() == [0, 1, 0]


def test_vocabulary_min_freq_drops_rare_tokens():
    vocab = Vocabulary.build(list("abracadabra"), min_freq=2)
    assert vocab.tokens == [UNK, "a", "b", "r"]
    assert vocab.encode(list("cab")).tolist() == [0, 1, 2]


def test_vocabulary_round_trip_and_rebuild_from_token_list():
    text = list("the quick brown fox jumps over the lazy dog")
    vocab = Vocabulary.build(text)
    ids = vocab.encode(text)
    assert ids.dtype == torch.long
    assert vocab.decode(ids) == text
    # A checkpoint stores vocab.tokens; the rebuilt vocabulary gives the same ids.
    again = Vocabulary(vocab.tokens)
    assert torch.equal(again.encode(text), ids)
    # A token list without <unk> gets it at id 0.
    assert Vocabulary(["x", "y"]).tokens == [UNK, "x", "y"]


# --------------------------------------------------------------------------- splits


@pytest.mark.parametrize("n", [10, 37, 100, 1001])
@pytest.mark.parametrize("val, test", [(0.05, 0.1), (0.0, 0.2), (0.3, 0.0), (0.0, 0.0), (0.4, 0.45)])
def test_split_by_position_contiguous_blocks_of_requested_sizes(n, val, test):
    train_s, val_s, test_s = split_by_position(n, val, test)
    covered = list(range(n))[train_s] + list(range(n))[val_s] + list(range(n))[test_s]
    assert covered == list(range(n))  # contiguous, in order, no overlap, nothing left out
    assert abs(len(range(n)[val_s]) - n * val) <= 0.5
    assert abs(len(range(n)[test_s]) - n * test) <= 0.5


def test_load_text_splits_builds_vocab_from_training_block_only(tmp_path):
    train_text = "abcab" * 16  # 80 chars
    val_text = "cab" * 3 + "a"  # 10 chars, only known chars
    test_text = "abcZZabcab"  # 10 chars, 'Z' appears nowhere else
    path = tmp_path / "t.txt"
    path.write_text(train_text + val_text + test_text, encoding="utf-8")
    splits = load_text_splits(TextDataConfig(path=str(path), val_fraction=0.1, test_fraction=0.1))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (80, 10, 10)
    assert "Z" not in splits.vocab.tokens
    assert sorted(splits.vocab.tokens) == sorted([UNK, "a", "b", "c"])
    assert splits.test.tolist() == splits.vocab.encode(list("abc") + [UNK, UNK] + list("abcab")).tolist()
    assert splits.test.tolist()[3:5] == [0, 0]
    assert "".join(splits.vocab.decode(splits.train)) == train_text
    assert "".join(splits.vocab.decode(splits.val)) == val_text


def test_load_text_splits_with_a_given_vocab_keeps_its_ids(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("hello world " * 10, encoding="utf-8")
    vocab = Vocabulary([UNK, "o", "l", "h"])
    splits = load_text_splits(TextDataConfig(path=str(path), val_fraction=0.1, test_fraction=0.1), vocab=vocab)
    assert splits.vocab is vocab
    assert splits.train[:5].tolist() == [3, 0, 2, 2, 1]


# --------------------------------------------------------------------------- samplers


def take(sampler, count):
    return [sampler.next_batch() for _ in range(count)]


@pytest.mark.parametrize("n, seq_len, batch_size", [(200, 8, 3), (97, 5, 2), (41, 4, 4)])
def test_random_windows_are_slices_without_overlap(n, seq_len, batch_size):
    tokens = torch.arange(n)
    sampler = WindowSampler(tokens, seq_len, batch_size, "random", seed=3)
    per_epoch = sampler.batches_per_epoch
    assert per_epoch == ((n - seq_len) // seq_len) // batch_size
    for epoch in range(3):
        seen = []
        for k in range(per_epoch):
            inputs, targets, starts_epoch = sampler.next_batch()
            assert starts_epoch == (k == 0)
            assert sampler.epoch == epoch
            assert inputs.shape == targets.shape == (batch_size, seq_len)
            for row_in, row_t in zip(inputs.tolist(), targets.tolist()):
                assert row_in == list(range(row_in[0], row_in[0] + seq_len))  # a contiguous slice
                assert row_t == [t + 1 for t in row_in]  # targets: inputs shifted by one
                assert row_t[-1] < n
            seen += inputs.flatten().tolist()
        assert len(seen) == len(set(seen)), "windows of one epoch overlap"


def test_random_windows_differ_between_epochs_and_seeds():
    tokens = torch.arange(400)
    a = WindowSampler(tokens, 8, 2, "random", seed=0)
    first = torch.stack([x for x, _, _ in take(a, a.batches_per_epoch)])
    second = torch.stack([x for x, _, _ in take(a, a.batches_per_epoch)])
    assert not torch.equal(first, second)
    b = WindowSampler(tokens, 8, 2, "random", seed=1)
    assert not torch.equal(first, torch.stack([x for x, _, _ in take(b, b.batches_per_epoch)]))
    c = WindowSampler(tokens, 8, 2, "random", seed=0)
    assert torch.equal(first, torch.stack([x for x, _, _ in take(c, c.batches_per_epoch)]))


@pytest.mark.parametrize("n, seq_len, batch_size", [(200, 8, 3), (101, 4, 2), (64, 8, 4)])
def test_sequential_rows_continue_across_batches(n, seq_len, batch_size):
    tokens = torch.arange(n)
    sampler = WindowSampler(tokens, seq_len, batch_size, "sequential", seed=5)
    per_epoch = sampler.batches_per_epoch
    assert per_epoch >= 1
    for epoch in range(3):
        previous = None
        seen = []
        for k in range(per_epoch):
            inputs, targets, starts_epoch = sampler.next_batch()
            assert starts_epoch == (k == 0)
            assert inputs.shape == targets.shape == (batch_size, seq_len)
            assert torch.equal(targets, inputs + 1)
            assert torch.equal(inputs[:, 1:], inputs[:, :-1] + 1)
            assert int(targets.max()) < n
            if previous is not None:
                # Row b of batch k+1 picks up exactly where row b of batch k stopped.
                assert torch.equal(inputs[:, 0], previous[:, -1] + 1)
            previous = inputs
            seen += inputs.flatten().tolist()
        assert len(seen) == len(set(seen))
    assert sampler.epoch == 2


@pytest.mark.parametrize("scheme", ["random", "sequential"])
@pytest.mark.parametrize("stop_after", [0, 1, 3, 5, 6, 7])
def test_state_dict_resumes_the_same_batches(scheme, stop_after):
    tokens = torch.arange(150)
    uninterrupted = WindowSampler(tokens, 8, 3, scheme, seed=11)
    per_epoch = uninterrupted.batches_per_epoch  # 5 for both schemes here, so stops cross epoch ends
    assert per_epoch == 5
    take(uninterrupted, stop_after)
    state = uninterrupted.state_dict()
    # What a checkpoint does with it: torch.save, then a weights_only load.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    expected = take(uninterrupted, 2 * per_epoch + 1)

    resumed = WindowSampler(tokens, 8, 3, scheme, seed=999)  # the seed must not matter after loading
    take(resumed, 2)
    resumed.load_state_dict(state)
    got = take(resumed, 2 * per_epoch + 1)
    for (xe, te, se), (xg, tg, sg) in zip(expected, got):
        assert torch.equal(xe, xg) and torch.equal(te, tg) and se == sg
    assert resumed.epoch == uninterrupted.epoch and resumed.position == uninterrupted.position


@pytest.mark.parametrize("scheme", ["random", "sequential"])
def test_too_few_tokens_names_batch_size_and_seq_len(scheme):
    seq_len, batch_size = 8, 4
    minimum = seq_len * (batch_size + 1)  # one batch of windows plus a one-token shift, for any offset
    sampler = WindowSampler(torch.arange(minimum), seq_len, batch_size, scheme, seed=0)
    assert sampler.batches_per_epoch == 1
    inputs, targets, _ = sampler.next_batch()
    assert int(targets.max()) < minimum
    with pytest.raises(GrutrainError) as info:
        WindowSampler(torch.arange(minimum - 1), seq_len, batch_size, scheme, seed=0)
    message = str(info.value)
    assert "train.batch_size" in message and "data.seq_len" in message
    assert str(minimum - 1) in message


# --------------------------------------------------------------------------- evaluation streams


def collect_streams(n, seq_len, max_streams):
    tokens = torch.arange(n)
    chunks = list(eval_streams(tokens, seq_len, max_streams))
    targets = torch.cat([t.flatten() for _, t, _ in chunks]).tolist() if chunks else []
    return tokens, chunks, targets


@pytest.mark.parametrize("n, seq_len, max_streams", [(101, 8, 4), (17, 8, 2), (50, 8, 1), (5, 8, 4), (97, 4, 3)])
def test_eval_streams_cover_every_target_once(n, seq_len, max_streams):
    # (n - 1) targets divisible by the number of streams used.
    tokens, chunks, targets = collect_streams(n, seq_len, max_streams)
    assert sorted(targets) == list(range(1, n))
    streams = chunks[0][0].shape[0]
    assert streams <= max_streams
    for inputs, tgt, _ in chunks:
        assert inputs.shape[1] <= seq_len
        assert torch.equal(tgt, inputs + 1)
    # The hidden state is carried per row: row s of chunk k+1 continues row s of chunk k ...
    full = [(a, rows) for a, _, rows in chunks if rows == slice(None)]
    for (a, _), (b, _) in zip(full, full[1:]):
        assert torch.equal(b[:, 0], a[:, -1] + 1)
    # ... and a leftover tail continues the last stream, the rows it names.
    for inputs, _, rows in chunks:
        if rows != slice(None):
            assert rows == slice(streams - 1, streams) and int(inputs[0, 0]) == int(full[-1][0][-1, -1]) + 1


@pytest.mark.parametrize("n, seq_len, max_streams", [(102, 8, 4), (20, 4, 3)])
def test_eval_streams_cover_every_target_when_not_divisible(n, seq_len, max_streams):
    _, _, targets = collect_streams(n, seq_len, max_streams)
    assert sorted(targets) == list(range(1, n))


# --------------------------------------------------------------------------- bigram baseline


def test_bigram_perplexity_matches_hand_computation():
    train = torch.tensor([0, 1, 1, 2])
    split = torch.tensor([1, 2, 0])
    # Add-one counts, rows = previous token: row 1 = [1, 1+1, 1+1] (pairs 1->1, 1->2), row 2 = [1, 1, 1].
    # P(2|1) = 2/5, P(0|2) = 1/3; perplexity = exp(-(ln 2/5 + ln 1/3) / 2) = sqrt(15/2).
    assert bigram_perplexity(train, split, 3) == pytest.approx(math.sqrt(7.5), rel=1e-12)


def test_bigram_perplexity_of_a_deterministic_cycle_is_near_one():
    train = torch.arange(4).repeat(500)  # 0 1 2 3 0 1 2 3 ...
    ppl = bigram_perplexity(train, torch.arange(4).repeat(3), 4)
    # Train has 500 pairs each of 0->1, 1->2, 2->3 and 499 of 3->0; add-one over 4 tokens gives
    # P = 501/504 for the first three and 500/503 for 3->0. The split has 9 of those and 2 of 3->0.
    expected = math.exp(-(9 * math.log(501 / 504) + 2 * math.log(500 / 503)) / 11)
    assert ppl == pytest.approx(expected, rel=1e-12)
    assert ppl < 1.01
