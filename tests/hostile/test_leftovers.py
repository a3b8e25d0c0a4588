"""Issue 22, class "leftovers" (reproduction 10): what a killed or interrupted command leaves behind,
through the real CLI in a fresh process.

- SIGKILL in the middle of a checkpoint save leaves its temporary (a whole checkpoint); the next
  fit --resume, eval or export of a checkpoint in that directory removes it. Round two's temporaries
  (`.last.pt.XXXXXXXX.tmp`, no PID in the name) are removed only when plainly stale (untouched for
  10 minutes); no other file is ever touched.
- SIGTERM or SIGINT during `grutrain prepare` leaves no `.bin` temporary: exit 143/130, one line.
- SIGTERM during `grutrain lr-find`: in the sweep, no lr-find/NAME-1 is left; while the results are
  written, the CSV, JSON and PNG all appear (the signal then ends the command).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_process import REPO
from conftest import make_text
from hostile import PAUSED_CLI, one_line, snapshot_tree, tiny_config, train_tiny_run, write_yaml

# The real CLI, with torch.save made to stop (and wait to be killed) once it has written a checkpoint
# into its temporary: the moment a SIGKILL leaves the most behind.
KILLED_IN_SAVE = """
import os, sys, time, torch
marker, original = os.environ["MARKER"], torch.save
def save_then_wait(obj, f, *args, **kwargs):
    original(obj, f, *args, **kwargs)
    f.flush()
    open(marker, "w").close()
    time.sleep(300)
torch.save = save_then_wait
from grutrain.cli import main
main(sys.argv[1:])
"""


def env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def grutrain(*args, cwd: Path) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "grutrain", *map(str, args)], cwd=cwd, env=env(),
                          check=False, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, f"{path.name} never appeared"
        time.sleep(0.02)


def temporaries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if p.name.endswith(".tmp"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny run (4 steps), trained once in this process."""
    root = tmp_path_factory.mktemp("leftovers")
    train_tiny_run(root)
    return root


@pytest.fixture(scope="module")
def killed_in_a_save(trained, tmp_path_factory):
    """The trained run resumed and SIGKILLed in the middle of its first save: a template copied per test."""
    root = tmp_path_factory.mktemp("killed")
    shutil.copytree(trained / "run", root / "run")
    marker = root / ".saved"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_IN_SAVE, "fit", trained / "tiny.yaml",
                             f"run.dir={root / 'run'}", "--resume", "train.max_steps=8", "-q"],
                            cwd=root, env=env(MARKER=str(marker)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(marker, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    marker.unlink()
    left = [p for p in (root / "run" / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    assert len(left) == 1 and left[0].stat().st_size > 10_000, left  # a whole checkpoint, as the issue saw
    return root / "run"


NEXT = [  # (the next command in that directory, its argv given the run dir and a scratch dir)
    ("fit --resume", lambda trained, run, scratch: ["fit", trained / "tiny.yaml", f"run.dir={run}", "--resume",
                                                    "train.max_steps=6", "-q"]),
    ("eval", lambda trained, run, scratch: ["eval", run / "checkpoints" / "best.pt", "--json"]),
    ("export", lambda trained, run, scratch: ["export", run / "checkpoints" / "last.pt", "--format", "state-dict",
                                              "--output", scratch / "model.pt"]),
]


@pytest.mark.parametrize("command,argv", NEXT, ids=[c[0] for c in NEXT])
def test_the_temporary_of_a_save_killed_by_sigkill_is_removed_by_the_next_command(trained, killed_in_a_save,
                                                                                  tmp_path, command, argv):
    run = tmp_path / "run"
    shutil.copytree(killed_in_a_save, run)
    (run / "checkpoints" / "notes.tmp").write_text("someone else's\n")  # never touched
    kept = {name: content for name, content in snapshot_tree(run / "checkpoints").items() if ".grutrain-" not in name}
    code, _out, err = grutrain(*argv(trained, run, tmp_path), cwd=tmp_path)
    assert code == 0, err[-2000:]
    assert temporaries(run) == ["notes.tmp"]
    if command != "fit --resume":  # a read leaves every other file as it was
        assert snapshot_tree(run / "checkpoints") == kept


def test_round_twos_temporaries_are_removed_only_when_stale_and_clearly_grutrains(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    checkpoints = run / "checkpoints"
    an_hour_ago = time.time() - 3600
    stale = [checkpoints / ".last.pt.k3j_9x0a.tmp", checkpoints / ".best.pt.ab12cd34.tmp"]
    kept = [checkpoints / ".last.pt.q8w2e7r1.tmp",  # recent: a writer may still be at it
            checkpoints / ".model.pt.ab12cd34.tmp",  # not a checkpoint grutrain writes there
            checkpoints / ".last.pt.abc.tmp", checkpoints / "notes.tmp", checkpoints / "last.pt.ab12cd34.tmp"]
    for path in stale + kept:
        path.write_bytes(b"x" * 100)
        if path != kept[0]:
            os.utime(path, (an_hour_ago, an_hour_ago))
    code, _out, err = grutrain("eval", checkpoints / "best.pt", "--json", cwd=tmp_path)
    assert code == 0, err[-2000:]
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)


@pytest.fixture
def big_corpus(tmp_path) -> Path:
    """A few MB of text: its token cache takes a second or more to write, time enough for a signal."""
    (tmp_path / "corpus.txt").write_text(make_text(2000) * 60, encoding="utf-8")
    return write_yaml(tmp_path / "prep.yaml", tiny_config(tmp_path, data={"cache_dir": str(tmp_path / "cache"),
                                                                          "tokenizer": "word"}))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_prepare_leaves_no_cache_temporary(big_corpus, tmp_path, sig):
    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-m", "grutrain", "prepare", big_corpus], cwd=tmp_path, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while not (cache.is_dir() and temporaries(cache)):  # the .bin's temporary is being written
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline
            time.sleep(0.01)
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + sig, err[-2000:]
    one_line(err, signal.Signals(sig).name, "no cache was written")
    assert list(cache.iterdir()) == []  # no .bin.tmp, no half cache


def lr_find_paused(root: Path, pause: str, sig: int) -> tuple[int, str, str]:
    marker = root / ".paused"
    proc = subprocess.Popen([sys.executable, "-c", PAUSED_CLI, "lr-find", root / "tiny.yaml", "--steps", "12"],
                            cwd=root, env=env(PAUSE_AT=f"{pause}|{marker}"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for(marker, proc)
        proc.send_signal(sig)
        time.sleep(0.2)
        (root / ".paused.go").touch()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    marker.unlink(missing_ok=True)
    (root / ".paused.go").unlink(missing_ok=True)
    return proc.returncode, out, err


def test_lr_find_interrupted_in_its_sweep_leaves_no_directory(trained, tmp_path):
    shutil.copy(trained / "corpus.txt", tmp_path / "corpus.txt")
    write_yaml(tmp_path / "tiny.yaml", tiny_config(tmp_path))
    before = snapshot_tree(tmp_path)
    code, _out, err = lr_find_paused(tmp_path, "grutrain.commands.lr_find|next_batch|5", signal.SIGTERM)
    assert code == 143, err[-2000:]
    one_line(err, "SIGTERM", "it wrote nothing")
    assert not (tmp_path / "lr-find").exists()  # neither lr-find/tiny-1 nor the lr-find/ made for it
    assert snapshot_tree(tmp_path) == before


def test_lr_find_interrupted_while_writing_writes_its_results_together(trained, tmp_path):
    pytest.importorskip("matplotlib")
    shutil.copy(trained / "corpus.txt", tmp_path / "corpus.txt")
    write_yaml(tmp_path / "tiny.yaml", tiny_config(tmp_path))
    code, _out, err = lr_find_paused(tmp_path, "grutrain.commands.lr_find|commit_together|1", signal.SIGTERM)
    assert code == 143, err[-2000:]
    one_line(err, "SIGTERM", "its results are written to lr-find/tiny-1")
    results = tmp_path / "lr-find" / "tiny-1"
    assert sorted(p.name for p in results.iterdir()) == ["lr_find.csv", "lr_find.json", "lr_find.png"]
    assert len(json.loads((results / "lr_find.json").read_text())["lrs"]) == 12
