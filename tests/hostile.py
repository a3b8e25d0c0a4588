"""Shared by the hostile-input tests: a tiny trained run, the one-line-error check, snapshots."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import TINY_CONFIG, _snapshot, make_text


def tiny_config(root: Path, **sections) -> dict:
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in TINY_CONFIG.items()}
    cfg["data"]["path"] = str(root / "corpus.txt")
    for section, values in sections.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    return cfg


def write_yaml(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def train_tiny_run(root: Path) -> dict:
    """A corpus, a config and a finished tiny run under `root`, trained in this process."""
    from grutrain.cli import main

    (root / "corpus.txt").write_text(make_text(), encoding="utf-8")
    config = write_yaml(root / "tiny.yaml", tiny_config(root, run={"dir": str(root / "run")}))
    try:
        main(["fit", str(config), "--quiet"])
    except SystemExit as exc:
        assert not exc.code
    run = root / "run"
    return {"root": root, "corpus": root / "corpus.txt", "config": config, "run": run,
            "best": run / "checkpoints" / "best.pt", "last": run / "checkpoints" / "last.pt"}


def refused(code, out, err, *needles, exit_code=1) -> str:
    """Exit `exit_code`, one short `error:` line on stderr, no traceback, no escape codes."""
    assert code == exit_code, (code, out[-500:], err[-2000:])
    assert "Traceback" not in err and "Traceback" not in out, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err[-2000:]
    line = lines[0]
    assert line.startswith("error:"), line
    assert len(line) < 600 and "\x1b" not in line, line[:600]
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def one_line(err: str, *needles: str) -> str:
    """stderr is one `error:` line holding every needle, with no traceback (the exit code is the caller's)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err[-2000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def snapshot_tree(directory: Path) -> dict[str, bytes]:
    return _snapshot(directory)


def run_grutrain(args, *, cwd, timeout=120, env=None, stdin=subprocess.DEVNULL, shell_suffix=None):
    """`python -m grutrain ARGS` in a subprocess: (exit code, stdout, stderr); for what needs a real process."""
    full_env = {**os.environ, **(env or {})}
    command = [sys.executable, "-m", "grutrain", *[os.fsencode(a) if isinstance(a, bytes) else str(a) for a in args]]
    if shell_suffix is not None:  # e.g. ">&-" or "> /dev/full"
        import shlex

        line = " ".join(shlex.quote(os.fsdecode(c)) for c in command) + " " + shell_suffix
        proc = subprocess.run(["sh", "-c", line], cwd=cwd, env=full_env, capture_output=True, timeout=timeout,
                              stdin=stdin)
    else:
        proc = subprocess.run(command, cwd=cwd, env=full_env, capture_output=True, timeout=timeout, stdin=stdin)
    return proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")


# The real CLI, with one function of grutrain paused on its Nth call until the test says go.
PAUSED_CLI = """
import importlib, os, sys, time
module_name, attr, nth, marker = os.environ["PAUSE_AT"].split("|")
module = importlib.import_module(module_name)
original, calls = getattr(module, attr), [0]
def paused(*args, **kwargs):
    calls[0] += 1
    if calls[0] == int(nth):
        open(marker, "w").close()
        deadline = time.time() + 60
        while time.time() < deadline and not os.path.exists(marker + ".go"):
            time.sleep(0.02)
    return original(*args, **kwargs)
setattr(module, attr, paused)
from grutrain.cli import main
main(sys.argv[1:])
"""


def interrupted_then_wrapped(*args):
    """Stands in for a function of grutrain: SIGTERM to this process, whose handler's Interrupted then comes
    back as a RuntimeError, as Python wraps an exception raised in a class body's __set_name__ (torch imports
    modules while a model is built)."""
    import signal
    import time

    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises here, in the main thread
    except BaseException as exc:
        raise RuntimeError("Error calling __set_name__ on 'cached_property' instance") from exc
    raise AssertionError("the signal never arrived")
