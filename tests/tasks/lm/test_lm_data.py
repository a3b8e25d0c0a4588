"""The language model's data path against references: the in-memory tokenisation of before, an
uninterrupted run, files on disk, exit codes and messages."""

import json
import math

import numpy as np
import pytest
import torch

import grutrain.tasks.lm.token_cache as token_cache
import grutrain.trainer.loop as train_module
from grutrain.files.checkpoint import load_checkpoint
from grutrain.tasks import validate_config
from grutrain.tasks.lm.config import TextDataConfig
from grutrain.tasks.lm.corpus import cache_settings
from grutrain.data.vocabulary import Vocabulary
from grutrain.tasks.lm.text import WindowSampler, split_by_position, tokenize
from grutrain.tasks.lm.token_cache import CacheSettings, open_corpus
from grutrain.errors import GrutrainError
from grutrain.commands.evaluate import evaluate_checkpoint
from grutrain.trainer.fit import fit

from conftest import make_text


@pytest.fixture
def corpus_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(make_text(200) + "Ünïcödé — naïve café\r\nend\r\n", encoding="utf-8")
    return path


def settings(tokenizer="char", **kw):
    return CacheSettings(tokenizer=tokenizer, lowercase=False, val_fraction=0.1, test_fraction=0.1, **kw)


def config(path, run_dir, **sections):
    raw = {
        "data": {"path": str(path), "seq_len": 8, "val_fraction": 0.1, "test_fraction": 0.1},
        "model": {"embedding_dim": 6, "hidden_size": 12},
        "optim": {"lr": 0.01, "warmup_steps": 2},
        "train": {"max_steps": 8, "batch_size": 4, "eval_every": 3, "checkpoint_every": 2, "log_every": 1,
                  "device": "cpu"},
        "sample": {"length": 10},
        "run": {"dir": str(run_dir)},
    }
    for section, values in sections.items():
        raw[section].update(values)
    return validate_config(raw)


def old_in_memory_splits(path, min_freq=1):
    """What the LM task held before the cache: a Python list of characters, ids of its training vocabulary."""
    text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
    tokens = tokenize(text, "char")
    train, val, test = split_by_position(len(tokens), 0.1, 0.1)
    vocab = Vocabulary.build(tokens[train], min_freq)
    ids = vocab.encode(tokens)
    return vocab, ids[train], ids[val], ids[test]


def test_char_cache_holds_the_ids_of_the_in_memory_tokenisation(corpus_file, tmp_path):
    corpus = open_corpus(corpus_file, settings(), tmp_path / "cache", )
    vocab, train, val, test = old_in_memory_splits(corpus_file)
    assert isinstance(corpus.ids, np.memmap) and corpus.ids.dtype == np.uint8
    assert corpus.tokenizer.tokens == vocab.tokens
    for name, ids in (("train", train), ("val", val), ("test", test)):
        assert np.array_equal(corpus.split(name), ids.numpy()), name


def test_tokenising_in_small_blocks_gives_the_same_ids(corpus_file, tmp_path, monkeypatch):
    whole = open_corpus(corpus_file, settings("word"), tmp_path / "a")
    monkeypatch.setattr(token_cache, "BLOCK_BYTES", 64)  # many blocks, cut at newlines, a \r\n split across two
    blocks = open_corpus(corpus_file, settings("word"), tmp_path / "b")
    assert np.array_equal(np.asarray(whole.ids), np.asarray(blocks.ids)) and whole.splits == blocks.splits


@pytest.mark.parametrize("scheme", ["random", "sequential"])
def test_memmap_batches_equal_the_in_memory_batches(corpus_file, tmp_path, scheme):
    corpus = open_corpus(corpus_file, settings(), tmp_path / "cache")
    _, train, _, _ = old_in_memory_splits(corpus_file)
    mapped = WindowSampler(corpus.split("train"), 8, 4, scheme, seed=3)
    in_memory = WindowSampler(train, 8, 4, scheme, seed=3)
    for _ in range(2 * mapped.batches_per_epoch + 1):  # across an epoch boundary
        a, b = mapped.next_batch(), in_memory.next_batch()
        assert a[0].dtype == torch.long and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
    if scheme == "random":  # and both are the windows the seeded generator names
        generator = torch.Generator().manual_seed(3)
        offset = int(torch.randint(0, 8, (1,), generator=generator))
        fresh = WindowSampler(corpus.split("train"), 8, 4, scheme, seed=3)
        starts = (offset + 8 * torch.arange(fresh.num_windows))[torch.randperm(fresh.num_windows, generator=generator)]
        inputs, targets, _ = fresh.next_batch()
        idx = starts[:4, None] + torch.arange(8)
        assert torch.equal(inputs, train[idx]) and torch.equal(targets, train[idx + 1])


def test_cache_is_reused_and_rebuilt_when_one_byte_changes(corpus_file, tmp_path, monkeypatch):
    first = open_corpus(corpus_file, settings(), tmp_path / "cache")
    built = []
    real_build = token_cache.build_cache
    monkeypatch.setattr(token_cache, "build_cache", lambda *a, **k: built.append(1) or real_build(*a, **k))
    again = open_corpus(corpus_file, settings(), tmp_path / "cache")
    assert built == [] and again.bin_path == first.bin_path
    raw = bytearray(corpus_file.read_bytes())
    raw[10] = ord("Q") if raw[10] != ord("Q") else ord("R")  # same size, one byte different
    corpus_file.write_bytes(bytes(raw))
    changed = open_corpus(corpus_file, settings(), tmp_path / "cache")
    assert built == [1]
    assert changed.meta["source"]["sha256"] != first.meta["source"]["sha256"]
    assert "Q" in changed.tokenizer.tokens or "R" in changed.tokenizer.tokens
    # Other settings are another cache, not a rebuild of this one.
    open_corpus(corpus_file, settings(lowercase_free := "bytes"), tmp_path / "cache")
    assert built == [1, 1] and lowercase_free


def test_a_truncated_cache_is_rebuilt(corpus_file, tmp_path):
    corpus = open_corpus(corpus_file, settings(), tmp_path / "cache")
    expected = np.asarray(corpus.ids).copy()
    corpus.bin_path.write_bytes(corpus.bin_path.read_bytes()[:100])
    rebuilt = open_corpus(corpus_file, settings(), tmp_path / "cache")
    assert np.array_equal(np.asarray(rebuilt.ids), expected)


def test_a_foreign_cache_file_is_refused_with_one_line_and_left_alone(tmp_path, write_config, run_cli, text_file):
    cache = tmp_path / "cache"
    cfg = validate_config({"task": "lm", "data": {"path": str(text_file), "val_fraction": 0.1, "test_fraction": 0.1}})
    key = token_cache.cache_key(text_file, cache_settings(cfg.data), None)
    cache.mkdir()
    foreign = cache / f"{key}.json"
    foreign.write_text('{"someone": "else"}')
    path = write_config(data={"cache_dir": str(cache), "val_fraction": 0.1, "test_fraction": 0.1})
    code, out, err = run_cli(["fit", path])
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "not a grutrain token cache" in err and str(foreign) in err and "data.cache_dir" in err
    assert foreign.read_text() == '{"someone": "else"}'


def test_a_rank_other_than_0_waits_for_the_cache_and_never_writes(corpus_file, tmp_path):
    with pytest.raises(GrutrainError, match="rank 0"):
        open_corpus(corpus_file, settings(), tmp_path / "cache", rank=1, wait_s=0.6)
    assert not list((tmp_path).glob("cache/*"))
    built = open_corpus(corpus_file, settings(), tmp_path / "cache", rank=0)
    waited = open_corpus(corpus_file, settings(), tmp_path / "cache", rank=1, wait_s=0.6)
    assert waited.bin_path == built.bin_path


@pytest.mark.parametrize("tokenizer", ["bytes", "bpe"])
def test_bits_per_character_are_per_character(corpus_file, tmp_path, tokenizer):
    run_dir = tmp_path / "run"
    summary = fit(config(corpus_file, run_dir, data={"tokenizer": tokenizer, "vocab_size": 300}), progress="none")
    text = corpus_file.read_text(encoding="utf-8").replace("\r\n", "\n")
    _, lo, hi = token_cache.split_bounds(len(text), 0.1, 0.1)[1]
    payload = load_checkpoint(run_dir / "checkpoints" / "last.pt")["task_state"]
    n_tokens = len(payload["eval_tokens"]["val"])
    assert payload["eval_chars"]["val"] == hi - lo
    if tokenizer == "bpe":
        assert n_tokens < hi - lo  # merges: fewer tokens than characters
    loss = summary["final"]["val/loss"]
    assert summary["final"]["val/bpc"] == pytest.approx(loss / math.log(2) * n_tokens / (hi - lo))
    metrics = evaluate_checkpoint(run_dir / "checkpoints" / "last.pt", split="val", device="cpu")
    assert metrics["loss"] == pytest.approx(loss) and metrics["bpc"] == pytest.approx(summary["final"]["val/bpc"])


def test_bpe_model_samples_and_loads_a_tokenizer_json(corpus_file, tmp_path, run_cli):
    fit(config(corpus_file, tmp_path / "run", data={"tokenizer": "bpe", "vocab_size": 300}), progress="none")
    payload = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["task_state"]
    code, out, err = run_cli(["sample", tmp_path / "run" / "checkpoints" / "last.pt", "--prompt", "Alice",
                              "--length", "5", "--seed", "1"])
    assert code == 0 and out.startswith("Alice"), err
    saved = tmp_path / "tokenizer.json"
    saved.write_text(payload["tokenizer"]["tokenizer_json"], encoding="utf-8")
    summary = fit(config(corpus_file, tmp_path / "run2", data={"tokenizer": "bpe", "tokenizer_path": str(saved)}),
                  progress="none")
    again = load_checkpoint(tmp_path / "run2" / "checkpoints" / "last.pt")["task_state"]
    assert again["tokenizer"] == payload["tokenizer"] and again["vocab"] == payload["vocab"]
    assert math.isfinite(summary["final"]["val/loss"])


@pytest.mark.parametrize("sampling", ["random", "sequential"])
def test_resume_from_the_cache_is_bitwise_exact(corpus_file, tmp_path, monkeypatch, sampling):
    data = {"tokenizer": "bytes", "sampling": sampling}
    fit(config(corpus_file, tmp_path / "full", data=data), progress="none")
    real_save = train_module.save_checkpoint

    class Crash(Exception):
        pass

    def save_then_crash(payload, path):
        real_save(payload, path)
        if path.name == "last.pt" and payload["trainer"]["step"] == 4:
            raise Crash

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_crash)
    with pytest.raises(Crash):
        fit(config(corpus_file, tmp_path / "cut", data=data), progress="none")
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)
    fit(config(corpus_file, tmp_path / "cut", data=data), resume=True, progress="none")
    full = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["model"]
    resumed = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["model"]
    for name in full:
        assert torch.equal(full[name], resumed[name]), name


def test_in_training_evaluation_reads_a_fixed_capped_subset(corpus_file, tmp_path):
    from grutrain.tasks import training_task

    task = training_task(config(corpus_file, tmp_path / "run", train={"eval_tokens": 64}), rows_per_step=4)
    model = task.build_model()
    device = torch.device("cpu")
    capped = [task.evaluate(model, "val", device, whole=False)["loss"] for _ in range(2)]  # as fit's evaluations
    whole = task.evaluate(model, "val", device, whole=True)["loss"]
    uncapped = training_task(config(corpus_file, tmp_path / "run", train={"eval_tokens": None}), rows_per_step=4)
    assert capped[0] == capped[1]  # the same positions every time
    assert capped[0] != whole
    assert whole == pytest.approx(uncapped.evaluate(model, "val", device, whole=False)["loss"])
    assert task.evaluate(model, "val", device)["loss"] == whole  # commands read the whole split


def test_large_held_out_splits_are_recorded_by_path_and_hash(corpus_file, tmp_path, run_cli):
    run_dir = tmp_path / "run"
    summary = fit(config(corpus_file, run_dir, data={"carry_max_tokens": 10}), progress="none")
    ckpt = run_dir / "checkpoints" / "last.pt"
    payload = load_checkpoint(ckpt)["task_state"]
    assert "eval_tokens" not in payload
    assert payload["eval_source"]["size"] == corpus_file.stat().st_size
    code, out, err = run_cli(["eval", ckpt, "--split", "test", "--json"])
    assert code == 0, err
    assert json.loads(out)["loss"] == pytest.approx(summary["final"]["test/loss"])
    moved = tmp_path / "elsewhere.txt"
    corpus_file.rename(moved)
    code, out, err = run_cli(["eval", ckpt])
    assert code == 1 and len(err.strip().splitlines()) == 1 and "--data" in err and "gone" in err
    code, out, err = run_cli(["eval", ckpt, "--split", "test", "--data", moved, "--json"])
    assert code == 0 and json.loads(out)["split"] == "test", err  # the recorded split, found at its new place
    assert json.loads(out)["loss"] == pytest.approx(summary["final"]["test/loss"])
    corpus_file.write_bytes(moved.read_bytes().replace(b"Alice", b"Alicf", 1))  # back, but changed
    code, out, err = run_cli(["eval", ckpt])
    assert code == 1 and len(err.strip().splitlines()) == 1 and "changed" in err, err


def test_old_checkpoints_without_a_tokenizer_still_evaluate(corpus_file, tmp_path):
    run_dir = tmp_path / "run"
    fit(config(corpus_file, run_dir), progress="none")
    ckpt = run_dir / "checkpoints" / "last.pt"
    payload = load_checkpoint(ckpt)
    expected = evaluate_checkpoint(ckpt, device="cpu")
    for key in ("tokenizer", "eval_chars"):
        del payload["task_state"][key]
    torch.save(payload, tmp_path / "old.pt")
    assert evaluate_checkpoint(tmp_path / "old.pt", device="cpu")["loss"] == pytest.approx(expected["loss"])


def test_data_config_accepts_the_tokenizers():
    for name in ("char", "word", "bytes", "bpe"):
        assert TextDataConfig(tokenizer=name).tokenizer == name


@pytest.mark.parametrize("key, value", [("eval_chars", "many"), ("eval_source", {"path": 3})])
def test_a_damaged_record_of_the_held_out_data_is_one_line(corpus_file, tmp_path, run_cli, key, value):
    run_dir = tmp_path / "run"
    fit(config(corpus_file, run_dir, data={"carry_max_tokens": 10 if key == "eval_source" else 1_000_000}),
        progress="none")
    payload = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert key in payload["task_state"]
    payload["task_state"][key] = value
    damaged = tmp_path / "damaged.pt"
    torch.save(payload, damaged)
    code, out, err = run_cli(["eval", damaged])
    assert code == 1 and len(err.strip().splitlines()) == 1 and "damaged" in err and key in err, err
    code, out, err = run_cli(["sample", damaged, "--prompt", "Alice", "--length", "5"])
    assert code == 0 and out.startswith("Alice"), err  # sampling needs no held-out data
