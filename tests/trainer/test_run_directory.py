"""The run directory's lifecycle (rundir.RunDirectory) on its own: what is left on disk after a
run that never began, one that began and failed before its first checkpoint (nothing), and one that wrote it;
and that lr-find starts from the very state fit starts from (one setup for both)."""

from __future__ import annotations

from pathlib import Path

import pytest

from grutrain.commands import lr_find
from grutrain.tasks import load_config
from grutrain.errors import GrutrainError
from grutrain.runtime import Distributed
from grutrain.trainer.fit import fit
from grutrain.trainer.metrics import read_metrics
from grutrain.trainer.rundir import LAST_CHECKPOINT, LOCK_FILE, RunDirectory


def make_run(path, text="old"):
    """A directory that looks like a finished grutrain run."""
    (path / "checkpoints").mkdir(parents=True)
    (path / "config.yaml").write_text("task: lm\n")
    (path / "summary.json").write_text(text)
    (path / LAST_CHECKPOINT).write_text("checkpoint")


def claim(run_dir, **flags):
    flags = {"resume": False, "overwrite": False, **flags}
    return RunDirectory(str(run_dir) if run_dir else None, "tiny", Distributed(), **flags)


def test_a_run_that_never_began_leaves_no_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError), claim(None) as directory:
        assert directory.path == Path("runs") / "tiny-1"
        assert (directory.path / LOCK_FILE).is_file()
        raise ValueError("bad input")
    assert not (tmp_path / "runs").exists()  # nor the runs/ made for it alone
    with pytest.raises(ValueError), claim(tmp_path / "explicit"):
        raise ValueError("bad input")
    assert not (tmp_path / "explicit").exists()


def test_a_refused_claim_touches_nothing(tmp_path, snapshot):
    make_run(tmp_path / "run")
    before = snapshot(tmp_path)
    with pytest.raises(GrutrainError, match="already holds a run"), claim(tmp_path / "run"):
        pass
    assert snapshot(tmp_path) == before


def test_overwrite_puts_the_earlier_run_back_unless_a_checkpoint_replaced_it(tmp_path):
    run = tmp_path / "run"
    make_run(run)
    # Bad input before training begins: the earlier run is never moved.
    with pytest.raises(ValueError), claim(run, overwrite=True):
        assert (run / "summary.json").read_text() == "old"
        raise ValueError("bad input")
    assert (run / "summary.json").read_text() == "old"
    # Training began, then failed before a checkpoint: the earlier run comes back, the new files go.
    with pytest.raises(ValueError), claim(run, overwrite=True) as directory:
        directory.begin()
        assert not (run / "summary.json").exists()
        (run / "metrics.jsonl").write_text("new")
        raise ValueError("diverged")
    assert (run / "summary.json").read_text() == "old" and not (run / "metrics.jsonl").exists()
    # exactly as before: not even the lock file the command made
    assert sorted(p.name for p in run.iterdir()) == sorted(["checkpoints", "config.yaml", "summary.json"])
    # The first checkpoint discards the earlier run: a later failure keeps the new one.
    with pytest.raises(ValueError), claim(run, overwrite=True) as directory:
        directory.begin()
        (run / "summary.json").write_text("new")
        directory.commit()  # the first checkpoint
        raise ValueError("diverged later")
    assert (run / "summary.json").read_text() == "new"
    assert not [p for p in run.iterdir() if p.name.startswith(".overwritten-")]


def test_a_run_that_failed_before_its_first_checkpoint_leaves_no_directory(tmp_path):
    """Issue 22: an error (a full disk at the first save) is undone like a signal, so the same command
    can be run again; once the first checkpoint is written the directory is kept."""
    with pytest.raises(ValueError), claim(tmp_path / "run") as directory:
        directory.begin()
        (tmp_path / "run" / "config.yaml").write_text("task: lm\n")
        (tmp_path / "run" / "checkpoints").mkdir()
        raise ValueError("failed during training")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError), claim(tmp_path / "run") as directory:
        directory.begin()
        directory.commit()  # the first checkpoint
        raise ValueError("failed later")
    assert (tmp_path / "run").is_dir()


def test_lr_find_starts_from_the_state_fit_starts_from(write_config, tmp_path):
    """The first loss of each is computed before any update: same setup, same model, same batch."""
    config = write_config(train={"log_every": 1, "max_steps": 1, "eval_every": 1})
    fit(load_config(config, []), progress="none")
    fit_loss = next(m["value"] for m in read_metrics(tmp_path / "run") if m["tag"] == "train/loss")
    result = lr_find.range_test(load_config(config, []), start=1e-4, end=1.0, steps=10)
    assert result.losses[0] == fit_loss
