"""The training loop against references: a second identical run, an uninterrupted run, files on disk."""

import json
import math

import pytest
import torch

import grutrain.trainer.loop as train_module
from grutrain.files.checkpoint import load_checkpoint
from grutrain.tasks import validate_config
from grutrain.trainer.metrics import read_metrics
from grutrain.trainer.fit import fit

SENTENCES = (
    "Alice was beginning to get very tired of sitting by her sister on the bank. "
    "So she was considering in her own mind whether the pleasure of making a daisy-chain "
    "would be worth the trouble of getting up and picking the daisies. "
)


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(SENTENCES * 12, encoding="utf-8")
    return path


def tiny_config(text_file, run_dir, **overrides):
    raw = {
        "data": {"path": str(text_file), "seq_len": 8, "sampling": "random"},
        "model": {"embedding_dim": 6, "hidden_size": 12, "num_layers": 2, "dropout": 0.1},
        "optim": {"lr": 0.01, "warmup_steps": 2},
        "train": {"max_steps": 10, "batch_size": 4, "eval_every": 3, "checkpoint_every": 2,
                  "log_every": 1},
        "sample": {"length": 10},
        "run": {"dir": str(run_dir)},
    }
    for key, value in overrides.items():
        section, name = key.split("__")
        raw[section][name] = value
    return validate_config(raw)


def scalar_curve(run_dir, tag):
    return [(m["step"], m["value"]) for m in read_metrics(run_dir) if m["tag"] == tag]


def params_of(run_dir):
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


def test_same_seed_same_loss_curve_and_different_seed_differs(text_file, tmp_path):
    fit(tiny_config(text_file, tmp_path / "a"), progress="none")
    fit(tiny_config(text_file, tmp_path / "b"), progress="none")
    fit(tiny_config(text_file, tmp_path / "c", train__seed=1), progress="none")
    curve_a = scalar_curve(tmp_path / "a", "train/loss")
    assert len(curve_a) == 10
    assert curve_a == scalar_curve(tmp_path / "b", "train/loss")
    assert curve_a != scalar_curve(tmp_path / "c", "train/loss")


class CrashAfterCheckpoint(Exception):
    pass


@pytest.mark.parametrize("sampling", ["random", "sequential"])
def test_resume_after_crash_matches_uninterrupted_run(text_file, tmp_path, monkeypatch, sampling):
    """Stop right after last.pt is written at step 4 (mid-epoch), resume, compare with a full run."""
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    fit(tiny_config(text_file, full_dir, data__sampling=sampling), progress="none")

    real_save = train_module.save_checkpoint

    def save_then_crash(payload, path):
        real_save(payload, path)
        if path.name == "last.pt" and payload["trainer"]["step"] == 4:
            raise CrashAfterCheckpoint

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_crash)
    with pytest.raises(CrashAfterCheckpoint):
        fit(tiny_config(text_file, cut_dir, data__sampling=sampling), progress="none")
    saved = load_checkpoint(cut_dir / "checkpoints" / "last.pt")
    assert saved["trainer"]["step"] == 4 and saved["sampler"]["position"] > 0  # stopped inside an epoch
    if sampling == "sequential":
        assert saved["hidden"] is not None  # the carried state is part of the checkpoint
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)

    fit(tiny_config(text_file, cut_dir, data__sampling=sampling), resume=True, progress="none")
    full, resumed = params_of(full_dir), params_of(cut_dir)
    assert full.keys() == resumed.keys()
    for name in full:
        assert torch.equal(full[name], resumed[name]), name
    for tag in ("train/loss", "val/loss", "grad_norm", "lr"):
        assert scalar_curve(full_dir, tag) == scalar_curve(cut_dir, tag), tag


def test_resume_refuses_a_changed_config(text_file, tmp_path):
    from grutrain.errors import GrutrainError

    fit(tiny_config(text_file, tmp_path / "r", train__max_steps=2), progress="none")
    with pytest.raises(GrutrainError, match="model.hidden_size"):
        fit(tiny_config(text_file, tmp_path / "r", model__hidden_size=16), resume=True, progress="none")
    # more steps are allowed
    summary = fit(tiny_config(text_file, tmp_path / "r", train__max_steps=4), resume=True, progress="none")
    assert summary["step"] == 4


def test_tensorboard_events_hold_the_values_of_metrics_jsonl(text_file, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "tb"
    fit(tiny_config(text_file, run_dir), progress="none")
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    expected_tags = {"train/loss", "val/loss", "val/perplexity", "lr", "grad_norm", "perf/tokens_per_s"}
    assert expected_tags <= tags
    for tag in tags:
        from_events = [(e.step, e.value) for e in accumulator.Scalars(tag)]
        from_jsonl = scalar_curve(run_dir, tag)
        assert [s for s, _ in from_events] == [s for s, _ in from_jsonl], tag
        for (_, a), (_, b) in zip(from_events, from_jsonl):
            assert a == pytest.approx(b, rel=1e-6), tag  # events store float32
    assert "sample/text_summary" in accumulator.Tags()["tensors"]  # a text sample at each evaluation
    # and, with the plot extra, the per-position loss figure at each evaluation
    images = accumulator.Images("val/loss_by_position")
    assert [e.step for e in images] == [3, 6, 9, 10] and all(e.encoded_image_string[:4] == b"\x89PNG" for e in images)


def test_run_directory_and_checkpoint_contents(text_file, tmp_path):
    run_dir = tmp_path / "run"
    summary = fit(tiny_config(text_file, run_dir), progress="none")
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk == summary and summary["status"] == "finished" and summary["step"] == 10
    assert validate_config(__import__("yaml").safe_load((run_dir / "config.yaml").read_text())) == tiny_config(text_file, run_dir)
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert last["trainer"]["step"] == 10 and last["format_version"] == 2
    assert last["config"]["model"]["hidden_size"] == 12 and last["task_state"]["vocab"][0] == "<unk>"
    val_losses = dict(scalar_curve(run_dir, "val/loss"))
    assert best["trainer"]["step"] == min(val_losses, key=val_losses.get)  # best.pt is the best validation loss
    assert best["trainer"]["monitor"]["best"] == pytest.approx(min(val_losses.values()))
    assert summary["final"]["val/perplexity"] == pytest.approx(math.exp(summary["final"]["val/loss"]))
    # no temporary files left from the atomic writes
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt", "last.pt"]


def test_epochs_set_the_number_of_steps(text_file, tmp_path):
    cfg = tiny_config(text_file, tmp_path / "e", train__epochs=2, data__sampling="sequential")
    summary = fit(cfg, progress="none")
    assert summary["epoch"] == 1 and summary["step"] == summary["total_steps"]
    assert summary["total_steps"] % 2 == 0


@pytest.mark.parametrize("backend,reset", [("torch", "after"), ("custom", "before")])
def test_backends_and_reset_variants_train(text_file, tmp_path, backend, reset):
    cfg = tiny_config(text_file, tmp_path / backend, model__backend=backend, model__reset=reset,
                      model__embedding_dim=0, optim__name="sgd", optim__lr=0.5, train__max_steps=30, train__eval_every=30)
    fit(cfg, progress="none")
    curve = [v for _, v in scalar_curve(tmp_path / backend, "train/loss")]
    assert sum(curve[-5:]) / 5 < sum(curve[:5]) / 5  # it learns


@pytest.mark.parametrize("sampling", ["random", "sequential"])
def test_accumulating_two_half_batches_equals_one_full_batch(text_file, tmp_path, sampling):
    full = fit(tiny_config(text_file, tmp_path / "k1", data__sampling=sampling, train__batch_size=4,
                           model__dropout=0.0), progress="none")
    half = fit(tiny_config(text_file, tmp_path / "k2", data__sampling=sampling, train__batch_size=2,
                           train__accumulate=2, model__dropout=0.0), progress="none")
    assert full["step"] == half["step"] == 10
    for (s1, a), (s2, b) in zip(scalar_curve(tmp_path / "k1", "train/loss"), scalar_curve(tmp_path / "k2", "train/loss")):
        assert s1 == s2 and a == pytest.approx(b, abs=1e-5)
    p1, p2 = params_of(tmp_path / "k1"), params_of(tmp_path / "k2")
    for name in p1:
        torch.testing.assert_close(p1[name], p2[name], atol=1e-5, rtol=1e-5, msg=name)


def test_early_stopping_stops_within_patience_and_hands_over_the_best_model(text_file, tmp_path):
    # An lr so small that the validation loss cannot improve by min_delta after the first evaluation.
    cfg = tiny_config(text_file, tmp_path / "es", optim__lr=1e-9, optim__warmup_steps=0, train__max_steps=100,
                      train__eval_every=2, train__early_stopping={"patience": 2, "min_delta": 1e-3})
    summary = fit(cfg, progress="none")
    assert summary["status"] == "finished"
    assert summary["step"] == 6  # evaluations at 2 (best), 4 and 6 (no improvement twice) -> stop
    assert summary["early_stopping"]["best_step"] == 2 and "did not improve" in summary["early_stopping"]["reason"]
    best = load_checkpoint(tmp_path / "es" / "checkpoints" / "best.pt")
    assert best["trainer"]["step"] == 2
    # the final metrics are those of best.pt's weights (restored, as Keras' restore_best_weights)
    assert summary["final"]["val/loss"] == pytest.approx(dict(scalar_curve(tmp_path / "es", "val/loss"))[2], abs=1e-6)


def test_early_stopping_on_an_unknown_metric_names_the_choices(text_file, tmp_path):
    from grutrain.errors import GrutrainError

    cfg = tiny_config(text_file, tmp_path / "bad", train__early_stopping={"metric": "val/accuracy"})
    with pytest.raises(GrutrainError, match="val/accuracy.*val/loss"):
        fit(cfg, progress="none")
