"""DistributedDataParallel through real torchrun processes (gloo on CPU)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from grutrain.files.checkpoint import load_checkpoint

TEXT = ("'Curiouser and curiouser!' cried Alice (she was so much surprised, that for the moment "
        "she quite forgot how to speak good English). ") * 20


def write_config(tmp_path, **train):
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    config = {
        # Deterministic: no dropout, constant lr, so "10 steps, then resume to 20" equals 20 steps.
        "data": {"path": str(text), "seq_len": 8, "sampling": "sequential"},
        "model": {"embedding_dim": 8, "hidden_size": 16, "num_layers": 2},
        "optim": {"lr": 0.01, "schedule": "constant"},
        "train": {"max_steps": 20, "batch_size": 8, "eval_every": 5, "checkpoint_every": 5, "log_every": 1,
                  "threads": 1, "dist_timeout_s": 60, **train},
        "sample": {"length": 0},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def fit(config, run_dir, *overrides, procs=1, resume=False):
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"]
                if procs > 1 else [sys.executable])
    command = [*launcher, "-m", "grutrain", "fit", str(config), f"run.dir={run_dir}", "--quiet", *overrides]
    result = subprocess.run(command + (["--resume"] if resume else []), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def curve(run_dir, tag="train/loss"):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(m["step"], m["value"]) for m in lines if m["tag"] == tag]


def assert_close_runs(a, b):
    ca, cb = curve(a), curve(b)
    assert [s for s, _ in ca] == [s for s, _ in cb] == list(range(1, 21))
    for (_, x), (_, y) in zip(ca, cb):
        assert x == pytest.approx(y, abs=1e-5)
    pa, pb = (load_checkpoint(d / "checkpoints" / "last.pt")["model"] for d in (a, b))
    for name in pa:
        torch.testing.assert_close(pa[name], pb[name], atol=1e-5, rtol=1e-5, msg=name)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    config = write_config(tmp)
    fit(config, tmp / "one")  # 1 process, batch 8, 20 steps
    return tmp, config


def test_two_processes_with_half_the_batch_match_one_process(reference):
    tmp, config = reference
    fit(config, tmp / "two", "train.batch_size=4", procs=2)
    summary = json.loads((tmp / "two" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["status"] == "finished"
    assert_close_runs(tmp / "one", tmp / "two")
    # only rank 0 wrote: one events file, one line per scalar and step
    assert len(list((tmp / "two").glob("events.out.tfevents.*"))) == 1
    assert len(curve(tmp / "two")) == 20


def test_resume_across_process_counts(reference):
    tmp, config = reference
    # a DDP run stopped at step 10 ...
    fit(config, tmp / "ddp-half", "train.batch_size=4", "train.max_steps=10", procs=2)
    assert load_checkpoint(tmp / "ddp-half" / "checkpoints" / "last.pt")["trainer"]["world_size"] == 2
    shutil.copytree(tmp / "ddp-half", tmp / "ddp-then-one")
    # ... resumes under DDP from its own checkpoint,
    fit(config, tmp / "ddp-half", "train.batch_size=4", procs=2, resume=True)
    assert_close_runs(tmp / "one", tmp / "ddp-half")
    # ... and in a single process with the same global batch.
    fit(config, tmp / "ddp-then-one", resume=True)
    assert_close_runs(tmp / "one", tmp / "ddp-then-one")
    # A single-process checkpoint resumes under DDP.
    fit(config, tmp / "one-then-ddp", "train.max_steps=10")
    fit(config, tmp / "one-then-ddp", "train.batch_size=4", procs=2, resume=True)
    assert_close_runs(tmp / "one", tmp / "one-then-ddp")


def test_a_changed_global_batch_is_refused_on_resume(reference, tmp_path):
    tmp, config = reference
    result = subprocess.run([sys.executable, "-m", "grutrain", "fit", str(config), f"run.dir={tmp / 'one'}",
                             "train.batch_size=4", "train.max_steps=30", "--resume"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "global batch of 8" in result.stderr and "train.batch_size=8" in result.stderr


def test_a_failure_on_one_rank_ends_every_rank(reference, tmp_path):
    """An exception on rank 1 only, mid-training: torchrun exits non-zero soon, no hang."""
    tmp, config = reference
    (tmp_path / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') == '1':\n"
        "    from grutrain.tasks.lm.task import LanguageModelTask as t\n"
        "    real, calls = t.loss, [0]\n"
        "    def failing(*args):\n"
        "        calls[0] += 1\n"
        "        if calls[0] == 3:\n"
        "            raise RuntimeError('injected failure on rank 1')\n"
        "        return real(*args)\n"
        "    t.loss = failing\n"
    )
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                             "-m", "grutrain", "fit", str(config), f"run.dir={tmp_path / 'run'}",
                             "train.batch_size=4", "--quiet"],
                            capture_output=True, text=True, timeout=200, env=env)
    assert result.returncode != 0
    assert "injected failure on rank 1" in result.stderr


def test_a_peer_dying_in_the_final_evaluation_keeps_the_run(tmp_path):
    """Rank 1 killed during the final evaluation (issue 22): rank 0 never says "no run was changed" while
    the run's checkpoints exist; they stay, and summary.json does not say "running"."""
    config = write_config(tmp_path, max_steps=10, checkpoint_every=10, eval_every=10)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(
        "import os, signal\n"
        "if os.environ.get('RANK') == '1':\n"
        "    import grutrain.trainer.fit as f\n"
        "    def dying(*args, **kwargs):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    f.finish = dying\n"
    )
    repo = str(Path(__file__).resolve().parents[2])  # this checkout first: sitecustomize imports grutrain early
    env = {**__import__("os").environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), repo])}
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                             "-m", "grutrain", "fit", str(config), f"run.dir={run}", "train.batch_size=4", "--quiet"],
                            capture_output=True, text=True, timeout=200, env=env)
    assert result.returncode != 0, result.stderr[-3000:]
    assert (run / "checkpoints" / "last.pt").exists(), result.stderr[-3000:]
    assert "no run was changed" not in result.stderr and "nothing was kept" not in result.stderr, result.stderr[-3000:]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["trainer"]["step"] == 10
    assert json.loads((run / "summary.json").read_text())["status"] != "running"
