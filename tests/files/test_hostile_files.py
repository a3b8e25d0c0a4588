"""Hostile input, round two (issue 12), the classes that touch files: --overwrite (1), outputs (2),
run-dir symlinks (3), unbounded reads (6) and late failures (11). Through the real CLI; each case
asserts the exit code, one stderr line, no traceback and the files on disk, byte for byte."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from hostile import refused, run_grutrain, snapshot_tree, tiny_config, train_tiny_run, write_yaml


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("hostile-files"))


@pytest.fixture(scope="module")
def forecast_best(tmp_path_factory):
    """A tiny forecast run's best.pt (predict needs a model that predicts)."""
    from test_forecast import HEADER, forecast_config, series_rows, write_csv

    from grutrain.cli import main

    root = tmp_path_factory.mktemp("hostile-forecast")
    data = write_csv(root / "series.csv", HEADER, series_rows(120))
    config = write_yaml(root / "fc.yaml", forecast_config(data, root / "run") | {
        "train": {"max_steps": 2, "batch_size": 8, "eval_every": 2, "checkpoint_every": 2, "device": "cpu"}})
    with pytest.raises(SystemExit) as info:
        main(["fit", str(config), "--quiet"])
    assert info.value.code == 0
    return root / "run" / "checkpoints" / "best.pt"


@pytest.fixture
def run_copy(world, tmp_path):
    return Path(shutil.copytree(world["run"], tmp_path / "old-run"))


def user_files(directory: Path) -> dict[str, bytes]:
    """A directory that is somebody's work, not a run: a config, data, notes."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "notes.txt").write_text("my notes\n")
    (directory / "data").mkdir(exist_ok=True)
    (directory / "data" / "table.csv").write_text("a,b\n1,2\n")
    return snapshot_tree(directory)


# --------------------------------------------------------------------------- 1. --overwrite


@pytest.mark.parametrize("where", ["cwd", "dot", "parent", "home", "user-dir", "root"])
def test_overwrite_never_deletes_what_is_not_a_run(world, run_cli, tmp_path, monkeypatch, where):
    home = tmp_path / "home"
    work = home / "work"
    before = user_files(work)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    config = write_yaml(tmp_path / "c.yaml", tiny_config(world["root"]))
    run_dir = {"cwd": str(work), "dot": ".", "parent": "..", "home": str(home), "user-dir": str(work / "data"),
               "root": "/"}[where]
    home_before = snapshot_tree(home)
    code, out, err = run_cli(["fit", config, f"run.dir={run_dir}", "--overwrite", "-q"])
    line = refused(code, out, err, "cannot hold this run")
    assert "--overwrite" not in line.split(";")[-1]  # the fix offered is never --overwrite
    assert snapshot_tree(work) == before
    assert snapshot_tree(home) == home_before


def test_without_overwrite_a_non_run_dir_is_refused_without_suggesting_overwrite(world, run_cli, tmp_path):
    before = user_files(tmp_path / "mine")
    code, out, err = run_cli(["fit", write_yaml(tmp_path / "c.yaml", tiny_config(world["root"])),
                              f"run.dir={tmp_path / 'mine'}"])
    line = refused(code, out, err, "not a grutrain run")
    assert "--overwrite" not in line
    assert snapshot_tree(tmp_path / "mine") == before


def failing_after_set_aside(monkeypatch, exc):
    """Make the new run fail after it has started writing but before its first checkpoint."""
    import grutrain.trainer.metrics

    def boom(self, *args, **kwargs):
        raise exc

    monkeypatch.setattr(grutrain.trainer.metrics.MetricsLogger, "__init__", boom)


@pytest.mark.parametrize("failure", ["error", "interrupt"])
def test_overwrite_keeps_the_old_run_until_the_new_one_has_a_checkpoint(world, run_cli, run_copy, tmp_path,
                                                                        monkeypatch, failure):
    from grutrain.errors import GrutrainError

    before = snapshot_tree(run_copy)
    failing_after_set_aside(monkeypatch, GrutrainError("disk trouble") if failure == "error" else KeyboardInterrupt())
    config = write_yaml(tmp_path / "c.yaml", tiny_config(world["root"], run={"dir": str(run_copy)}))
    code, out, err = run_cli(["fit", config, "train.seed=5", "--overwrite", "-q"])
    assert code in (1, 130) and "Traceback" not in err
    assert snapshot_tree(run_copy) == before  # every old file back, byte for byte, nothing new left
    assert not list(run_copy.glob(".overwritten-*"))


@pytest.mark.parametrize("overrides, needle", [
    (["data.min_freq=100000"], "data.min_freq"),
    (["model.hidden_size=4096"], "memory"),
])
def test_overwrite_keeps_the_old_run_when_the_new_one_cannot_start(world, run_cli, run_copy, tmp_path,
                                                                  monkeypatch, overrides, needle):
    import grutrain.capacity

    monkeypatch.setattr(grutrain.capacity, "available_memory", lambda: 200 << 20)
    before = snapshot_tree(run_copy)
    config = write_yaml(tmp_path / "c.yaml", tiny_config(world["root"], run={"dir": str(run_copy)}))
    code, out, err = run_cli(["fit", config, *overrides, "--overwrite", "-q"])
    refused(code, out, err, needle)
    assert snapshot_tree(run_copy) == before


def test_a_successful_overwrite_leaves_nothing_set_aside(world, run_cli, run_copy, tmp_path):
    config = write_yaml(tmp_path / "c.yaml", tiny_config(world["root"], run={"dir": str(run_copy)}))
    code, _, err = run_cli(["fit", config, "train.seed=5", "--overwrite", "-q"])
    assert code == 0, err
    assert not list(run_copy.glob(".overwritten-*"))
    assert json.loads((run_copy / "summary.json").read_text())["status"] == "finished"


# --------------------------------------------------------------------------- 2. outputs


def make_target(kind: str, tmp_path: Path, world) -> tuple[Path, Path | None]:
    """(the path to give as output, a file whose bytes must survive)."""
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    if kind == "fifo":
        path = tmp_path / "out.fifo"
        os.mkfifo(path)
        return path, None
    if kind == "symlink":
        path = tmp_path / "link.out"
        path.symlink_to(victim)
        return path, victim
    if kind == "dangling":
        path = tmp_path / "dangling.out"
        path.symlink_to(tmp_path / "nowhere")
        return path, None
    if kind == "device":
        return Path("/dev/null"), None
    if kind == "below-file":
        return victim / "out.json", victim
    raise AssertionError(kind)


OUTPUT_KINDS = ["fifo", "symlink", "dangling", "device", "below-file"]


def output_command(command: str, target: Path, world, tmp_path: Path) -> list:
    if command == "export":
        return ["export", world["best"], "--format", "state-dict", "--output", target]
    if command == "predict":
        data = tmp_path / "input.csv"
        data.write_text("y\n1\n2\n")
        return ["predict", world["best"], "--input", data, "--output", target]
    if command == "init":
        return ["init", "lm", "--output", target]
    if command == "eval-plot":
        return ["eval", world["best"], "--plot", target]
    raise AssertionError(command)


@pytest.mark.parametrize("kind", OUTPUT_KINDS)
@pytest.mark.parametrize("command", ["export", "predict", "init", "eval-plot"])
def test_outputs_go_only_to_a_new_path_or_a_regular_file(world, run_cli, tmp_path, command, kind):
    target, survivor = make_target(kind, tmp_path, world)
    before_tree = snapshot_tree(tmp_path)
    best_before = world["best"].read_bytes()
    code, out, err = run_cli(output_command(command, target, world, tmp_path))
    refused(code, out, err)
    assert snapshot_tree(tmp_path) == before_tree | ({"input.csv": b"y\n1\n2\n"} if command == "predict" else {})
    if survivor is not None:
        assert survivor.read_bytes() == b"precious\n"
    if kind in ("fifo", "dangling"):
        assert target.is_fifo() if kind == "fifo" else target.is_symlink()
    assert world["best"].read_bytes() == best_before


@pytest.mark.parametrize("command", ["export", "predict"])
def test_an_output_is_never_the_commands_own_input(world, run_cli, tmp_path, command):
    checkpoint = Path(shutil.copy(world["best"], tmp_path / "model.pt"))
    before = checkpoint.read_bytes()
    if command == "export":
        args = ["export", checkpoint, "--format", "state-dict", "--output", checkpoint]
    else:
        args = ["predict", checkpoint, "--input", checkpoint, "--output", checkpoint]
    code, out, err = run_cli(args)
    refused(code, out, err, "input")
    assert checkpoint.read_bytes() == before


@pytest.mark.parametrize("kind", ["fifo", "symlink", "below-file"])
def test_lr_find_output_dir_files(world, run_cli, tmp_path, kind):
    out_dir = tmp_path / "lr"
    out_dir.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    if kind == "fifo":
        os.mkfifo(out_dir / "lr_find.csv")
    elif kind == "symlink":
        (out_dir / "lr_find.json").symlink_to(victim)
    else:
        out_dir = victim / "sub"
    before = snapshot_tree(tmp_path)
    code, out, err = run_cli(["lr-find", world["config"], "--steps", "10", "--output-dir", out_dir])
    refused(code, out, err, "--output-dir")
    assert snapshot_tree(tmp_path) == before


# --------------------------------------------------------------------------- 3. run-dir files and symlinks


@pytest.mark.parametrize("kind", ["symlink", "directory"])
def test_a_hostile_lock_file_is_refused_and_its_target_untouched(world, run_cli, tmp_path, kind):
    run_dir = tmp_path / "fresh"
    run_dir.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    if kind == "symlink":
        (run_dir / ".lock").symlink_to(victim)
    else:
        (run_dir / ".lock").mkdir()
    config = write_yaml(tmp_path / "c.yaml", tiny_config(world["root"], run={"dir": str(run_dir)}))
    code, out, err = run_cli(["fit", config, "-q"])
    refused(code, out, err, ".lock")
    assert victim.read_bytes() == b"precious\n"
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]


def test_a_symlinked_summary_in_a_run_dir_is_not_written_through(world, run_cli, run_copy, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    (run_copy / "summary.json").unlink()
    (run_copy / "summary.json").symlink_to(victim)
    config = write_yaml(tmp_path / "c.yaml", tiny_config(world["root"], run={"dir": str(run_copy)}))
    code, out, err = run_cli(["fit", config, "train.max_steps=6", "--resume", "-q"])
    refused(code, out, err, "summary.json")
    assert victim.read_bytes() == b"precious\n"


# --------------------------------------------------------------------------- 6. reads without bounds


def special_input(kind: str, tmp_path: Path) -> Path:
    if kind == "fifo":
        path = tmp_path / "data.fifo"
        os.mkfifo(path)
        return path
    return Path({"zero": "/dev/zero", "urandom": "/dev/urandom"}[kind])


@pytest.mark.parametrize("kind", ["fifo", "zero", "urandom"])
@pytest.mark.parametrize("command", ["fit", "eval", "predict", "resume"])
def test_inputs_must_be_regular_files(world, forecast_best, run_cli, tmp_path, monkeypatch, command, kind):
    monkeypatch.chdir(tmp_path)
    source = special_input(kind, tmp_path)
    if command == "fit":
        args = ["fit", write_yaml(tmp_path / "c.yaml", tiny_config(world["root"], data={"path": str(source)})), "-q"]
    elif command == "eval":
        args = ["eval", world["best"], "--data", source]
    elif command == "predict":
        args = ["predict", forecast_best, "--input", source]
    else:  # a checkpoint that is not a file
        args = ["eval", source]
    before = snapshot_tree(tmp_path)
    code, out, err = run_cli(args)
    refused(code, out, err, "give a regular file")
    assert snapshot_tree(tmp_path) == before and not (tmp_path / "runs").exists()


def test_a_file_larger_than_memory_is_refused_before_reading(world, run_cli, tmp_path, monkeypatch):
    import grutrain.files.inputs

    monkeypatch.setattr(grutrain.files.inputs, "available_memory", lambda: 1 << 20)
    big = tmp_path / "big.txt"
    with open(big, "wb") as f:  # sparse: no disk used
        f.truncate(1 << 30)
    code, out, err = run_cli(["fit", write_yaml(tmp_path / "c.yaml", tiny_config(world["root"], data={"path": str(big)},
                                                                                  run={"dir": str(tmp_path / "r")})), "-q"])
    refused(code, out, err, "too large", "memory")
    assert not (tmp_path / "r").exists()


def test_runs_does_not_hang_on_a_fifo_summary(world, tmp_path):
    run = Path(shutil.copytree(world["run"], tmp_path / "runs" / "r-1"))
    (run / "summary.json").unlink()
    os.mkfifo(run / "summary.json")
    code, out, err = run_grutrain(["runs", "--json"], cwd=tmp_path, timeout=60)
    assert code == 0, err
    assert "Traceback" not in err
    assert json.loads(out)["runs"][0]["status"] in ("unknown", "crashed")


def test_sigterm_while_reading_leaves_no_run_dir(world, tmp_path):
    """SIGTERM while the data is read: exit 143, the run dir it created is gone."""
    import signal
    import subprocess
    import sys

    config = write_yaml(tmp_path / "c.yaml", tiny_config(world["root"], data={"path": str(world["corpus"])},
                                                       run={"dir": str(tmp_path / "r")}))
    # The data read made slow in a wrapper script, so the signal surely arrives during it.
    script = tmp_path / "slow_fit.py"
    script.write_text(
        "import time, grutrain.tasks.lm.token_cache as t\n"  # the language model's text is read by its token cache
        "real = t.open_input\n"
        "def slow(*a, **k):\n"
        "    print('reading', flush=True); time.sleep(30); return real(*a, **k)\n"
        "t.open_input = slow\n"
        "from grutrain.cli import main\n"
        f"main(['fit', {str(config)!r}, '-q'])\n")
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"reading"
    assert (tmp_path / "r").is_dir()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert b"Traceback" not in err and len(err.decode().strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- 11. checked before work starts


def test_run_dir_below_a_file(world, run_cli, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    config = write_yaml(tmp_path / "c.yaml", tiny_config(world["root"], run={"dir": str(blocker / "run")}))
    code, out, err = run_cli(["fit", config, "-q"])
    refused(code, out, err, "below the file")
    assert blocker.read_text() == "x"


def test_nested_json_in_classify_data(run_cli, tmp_path):
    data = tmp_path / "deep.jsonl"
    lines = ['{"x": ' + "[" * 50000 + "]" * 50000 + ', "y": "a"}'] + ['{"x": "abc", "y": "a"}', '{"x": "xyz", "y": "b"}'] * 20
    data.write_text("\n".join(lines) + "\n")
    config = write_yaml(tmp_path / "c.yaml", {"task": "classify", "data": {"path": str(data)},
                                              "model": {"hidden_size": 8}, "train": {"max_steps": 2, "batch_size": 4},
                                              "run": {"dir": str(tmp_path / "r")}})
    code, out, err = run_cli(["fit", config, "-q"])
    refused(code, out, err, "nested too deeply")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("what", ["config", "data", "checkpoint"])
def test_an_io_error_while_reading_is_one_line(world, run_cli, tmp_path, monkeypatch, what):
    """EIO from the disk (simulated: every read of the chosen file fails) names the file, no traceback."""
    import errno
    import io

    import grutrain.files.inputs

    # The data as a file of its own: the world's corpus already has a token cache, which fit would reuse.
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(world["corpus"].read_bytes())
    config = write_yaml(tmp_path / "c.yaml", tiny_config(world["root"], run={"dir": str(tmp_path / "r")},
                                                         data={"path": str(corpus)}))
    bad = {"config": config, "data": corpus, "checkpoint": world["best"]}[what]
    real_fdopen = os.fdopen

    class FailingReads(io.RawIOBase):
        def __init__(self, fd):
            self.fd = fd

        def readable(self):
            return True

        def readinto(self, buffer):
            raise OSError(errno.EIO, "Input/output error")

        def fileno(self):
            return self.fd

        def close(self):
            os.close(self.fd)
            super().close()

    def fdopen(fd, *args, **kwargs):
        if os.path.samefile(f"/proc/self/fd/{fd}", bad):
            return io.BufferedReader(FailingReads(fd))
        return real_fdopen(fd, *args, **kwargs)

    monkeypatch.setattr(grutrain.files.inputs.os, "fdopen", fdopen)
    args = ["eval", world["best"], "--json"] if what == "checkpoint" else ["fit", config, "-q"]
    code, out, err = run_cli(args)
    refused(code, out, err, "Input/output error" if what != "checkpoint" else str(bad))
    assert not (tmp_path / "r").exists()
