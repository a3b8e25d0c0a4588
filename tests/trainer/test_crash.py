"""Crash-proof training: signals, SIGKILL at random moments, divergence, locks, failing writes."""

import errno
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

import grutrain.files.checkpoint as checkpoint_module
import grutrain.trainer.loop as train_module
from grutrain.tasks.lm.task import LanguageModelTask
from grutrain.files.checkpoint import load_checkpoint, save_checkpoint
from grutrain.tasks import validate_config
from grutrain.errors import GrutrainError
from grutrain.trainer.rundir import RunLock
from grutrain.trainer.fit import fit

TEXT = ("The Queen turned angrily away from him, and said to the Knave 'Turn them over!' "
        "The Knave did so, very carefully, with one foot. ") * 20

# Enough steps that a subprocess is still training a few seconds after it starts.
KILL_TRIALS = int(os.environ.get("GRUTRAIN_KILL_TRIALS", "3"))


def raw_config(tmp_path, run_dir, **train):
    text = tmp_path / "text.txt"
    if not text.exists():
        text.write_text(TEXT, encoding="utf-8")
    return {
        "data": {"path": str(text), "seq_len": 8, "sampling": "sequential"},
        "model": {"embedding_dim": 8, "hidden_size": 16, "num_layers": 2, "dropout": 0.1},
        "optim": {"lr": 0.01},
        "train": {"max_steps": 12, "batch_size": 4, "eval_every": 5, "checkpoint_every": 3,
                  "log_every": 1, "threads": 1, **train},
        "sample": {"length": 5},
        "run": {"dir": str(run_dir)},
    }


def write_config(tmp_path, run_dir, name="cfg.yaml", **train):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw_config(tmp_path, run_dir, **train)))
    return path


def final_params(run_dir):
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


def assert_same_params(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def grutrain(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "grutrain", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def wait_for_step(run_dir, step, proc, timeout=120):
    """Wait until metrics.jsonl shows `step` or later (the subprocess is then in its training loop)."""
    deadline = time.time() + timeout
    path = run_dir / "metrics.jsonl"
    while time.time() < deadline:
        if path.exists() and any(f'"step": {s},' in path.read_text() for s in (step, step + 1, step + 2)):
            return
        if proc.poll() is not None:
            raise AssertionError(f"grutrain exited early with {proc.returncode}: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError("training did not reach the step in time")


@pytest.fixture(scope="module")
def long_run(tmp_path_factory):
    """An uninterrupted subprocess run of 400 steps: the reference for every interrupted one."""
    tmp = tmp_path_factory.mktemp("reference")
    config = write_config(tmp, tmp / "run", max_steps=400, checkpoint_every=1, eval_every=100)
    proc = grutrain("fit", str(config), "--quiet")
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    return tmp, final_params(tmp / "run")


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_saves_a_checkpoint_and_resume_is_exact(long_run, tmp_path, sig, code):
    reference_tmp, reference = long_run
    config = reference_tmp / "cfg.yaml"
    run_dir = tmp_path / "run"
    args = ["fit", str(config), f"run.dir={run_dir}", "--quiet"]
    proc = grutrain(*args)
    wait_for_step(run_dir, 50, proc)
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == code
    stderr = proc.stderr.read()
    assert "Traceback" not in stderr and "--resume" in stderr
    stopped = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert 50 <= stopped["trainer"]["step"] < 400
    summary = yaml.safe_load((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["step"] == stopped["trainer"]["step"]

    resumed = grutrain(*args, "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    assert_same_params(final_params(run_dir), reference)


def test_sigkill_at_random_moments_then_resume_is_exact(long_run, tmp_path):
    """SIGKILL lands anywhere, checkpoint writes included (one every step); resume until done."""
    reference_tmp, reference = long_run
    rng = random.Random(1234)
    for trial in range(KILL_TRIALS):
        run_dir = tmp_path / f"run{trial}"
        args = ["fit", str(reference_tmp / "cfg.yaml"), f"run.dir={run_dir}", "--quiet"]
        kills = 0
        while True:
            resume = ["--resume"] if (run_dir / "checkpoints" / "last.pt").exists() else ["--overwrite"]
            proc = grutrain(*args, *resume)
            if kills < 2:
                # A random step, then a random fraction of a step: often inside a checkpoint write.
                wait_for_step(run_dir, rng.randrange(10, 350), proc)
                time.sleep(rng.uniform(0, 0.02))
                proc.kill()
                assert proc.wait() == -signal.SIGKILL, "the run ended before the kill; give it more steps"
                kills += 1
                if (run_dir / "checkpoints" / "last.pt").exists():
                    load_checkpoint(run_dir / "checkpoints" / "last.pt")  # the latest checkpoint always loads
                continue
            assert proc.wait(timeout=600) == 0, proc.stderr.read()
            break
        assert_same_params(final_params(run_dir), reference)


def test_non_finite_loss_is_skipped_and_counted(tmp_path, monkeypatch):
    real_loss = LanguageModelTask.loss
    calls = {"n": 0}

    def nan_on_steps_3_and_4(self, model, batch, hidden):
        calls["n"] += 1
        loss, hidden = real_loss(self, model, batch, hidden)
        return (loss * float("nan"), hidden) if calls["n"] in (3, 4) else (loss, hidden)

    monkeypatch.setattr(LanguageModelTask, "loss", nan_on_steps_3_and_4)
    cfg = validate_config(raw_config(tmp_path, tmp_path / "run"))
    summary = fit(cfg, progress="none")
    assert summary["status"] == "finished" and summary["skipped_steps"] == 2
    params = final_params(tmp_path / "run")
    assert all(torch.isfinite(p).all() for p in params.values())
    lines = [m for m in map(yaml.safe_load, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
             if m["tag"] == "train/skipped_steps"]
    assert [(m["step"], m["value"]) for m in lines] == [(3, 1.0), (4, 2.0)]


def test_divergence_stops_with_a_clear_error_and_keeps_the_good_checkpoint(tmp_path, monkeypatch):
    real_loss = LanguageModelTask.loss
    calls = {"n": 0}

    def nan_from_step_7(self, model, batch, hidden):
        calls["n"] += 1
        loss, hidden = real_loss(self, model, batch, hidden)
        return (loss * float("inf"), hidden) if calls["n"] >= 7 else (loss, hidden)

    monkeypatch.setattr(LanguageModelTask, "loss", nan_from_step_7)
    cfg = validate_config(raw_config(tmp_path, tmp_path / "run", max_bad_steps=3, max_steps=20))
    with pytest.raises(GrutrainError, match="diverged: 3 steps in a row"):
        fit(cfg, progress="none")
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert last["trainer"]["step"] == 6  # checkpoint_every=3: the last good one
    summary = yaml.safe_load((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "diverged" in summary["error"]


def test_non_finite_weights_never_overwrite_a_good_checkpoint(tmp_path, monkeypatch):
    cfg = validate_config(raw_config(tmp_path, tmp_path / "run", max_steps=3))
    fit(cfg, progress="none")
    good = (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes()

    # As if the optimizer had produced inf weights from finite gradients (e.g. a huge lr).
    monkeypatch.setattr(train_module, "weights_are_finite", lambda model: False)
    cfg = validate_config(raw_config(tmp_path, tmp_path / "run", max_steps=6))
    with pytest.raises(GrutrainError, match="non-finite"):
        fit(cfg, resume=True, progress="none")
    assert (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes() == good


def test_failing_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "ckpt" / "last.pt"
    save_checkpoint({"config": {}, "model": {"w": torch.ones(3)}, "vocab": ["<unk>"], "step": 1}, path)
    before = path.read_bytes()

    def disk_full(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", disk_full)
    with pytest.raises(GrutrainError, match="No space left on device"):
        save_checkpoint({"config": {}, "model": {"w": torch.zeros(3)}, "vocab": ["<unk>"], "step": 2}, path)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_a_second_process_cannot_use_a_locked_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with RunLock(run_dir):
        with pytest.raises(GrutrainError, match=f"PID {os.getpid()}"):
            fit(validate_config(raw_config(tmp_path, run_dir)), progress="none")
    # a stale lock file (its process is gone, so no flock is held) is taken over
    (run_dir / ".lock").write_text("999999\n")
    assert fit(validate_config(raw_config(tmp_path, run_dir)), progress="none")["status"] == "finished"


def test_a_locked_run_dir_in_a_real_second_process(tmp_path):
    config = write_config(tmp_path, tmp_path / "run", max_steps=100000, eval_every=100000)
    first = grutrain("fit", str(config), "--quiet")
    try:
        wait_for_step(tmp_path / "run", 5, first)
        second = subprocess.run([sys.executable, "-m", "grutrain", "fit", str(config), "--resume"],
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 1
        assert f"PID {first.pid}" in second.stderr and "Traceback" not in second.stderr
    finally:
        first.kill()
        first.wait()


def test_keep_last_keeps_the_latest_periodic_checkpoints(tmp_path):
    cfg = validate_config(raw_config(tmp_path, tmp_path / "run", keep_last=2, max_steps=12, checkpoint_every=3))
    fit(cfg, progress="none")
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["best.pt", "last.pt", "step-00000009.pt", "step-00000012.pt"]
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "step-00000009.pt")["trainer"]["step"] == 9
