"""Where a run's files go: a fresh runs/<name>-N per run unless run.dir names one.

A run directory is locked while a process trains in it (an flock on `.lock`, released by the
kernel when the process dies, so a stale lock never blocks anyone).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from grutrain.errors import GrutrainError

RUNS_ROOT = Path("runs")
LAST_CHECKPOINT = Path("checkpoints") / "last.pt"
BEST_CHECKPOINT = Path("checkpoints") / "best.pt"
LOCK_FILE = ".lock"


def holds_run(path: Path) -> bool:
    return path.is_dir() and any(child.name != LOCK_FILE for child in path.iterdir())


def numbered_runs(name: str, root: Path = RUNS_ROOT) -> list[tuple[int, Path]]:
    pattern = re.compile(re.escape(name) + r"-(\d+)$")
    found = []
    if root.is_dir():
        for child in root.iterdir():
            match = pattern.match(child.name)
            if match and child.is_dir():
                found.append((int(match.group(1)), child))
    return sorted(found)


def claim_numbered_dir(name: str, root: Path) -> Path:
    """A new `root/<name>-N`, N one more than the highest there, created.

    mkdir without exist_ok claims the number, so parallel processes never share a directory.
    """
    existing = numbered_runs(name, root)
    number = existing[-1][0] + 1 if existing else 1
    while True:
        path = root / f"{name}-{number}"
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            number += 1


def resolve_run_dir(run_dir: str | None, name: str, *, resume: bool, overwrite: bool) -> Path:
    """The directory for this run, created; refuses to overwrite a run silently."""
    if resume and overwrite:
        raise GrutrainError("--resume and --overwrite contradict each other; give one of them")
    if run_dir is None:
        if resume:
            existing = numbered_runs(name)
            if not existing:
                raise GrutrainError(f"--resume: no run named {name!r} under {RUNS_ROOT}/ to resume; "
                                    "set run.dir to the run to continue")
            path = existing[-1][1]
        else:
            return claim_numbered_dir(name, RUNS_ROOT)
    else:
        path = Path(run_dir)
        if path.exists() and not path.is_dir():
            raise GrutrainError(f"run.dir {str(path)!r} is a file; give a directory")
        if holds_run(path) and not (resume or overwrite):
            raise GrutrainError(f"run.dir {str(path)!r} already holds a run; pass --resume to continue it "
                                "or --overwrite to start it again")
    if resume and not (path / LAST_CHECKPOINT).is_file():
        raise GrutrainError(f"--resume: {str(path / LAST_CHECKPOINT)!r} not found; there is nothing to resume "
                            "(start without --resume)")
    path.mkdir(parents=True, exist_ok=True)
    return path


class RunLock:
    """Exclusive use of a run directory; a second process gets an error naming the holder's PID."""

    def __init__(self, path: Path):
        self.path = path / LOCK_FILE
        self._fd = None

    def acquire(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # no flock on this platform: run without the guard
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise GrutrainError(f"run dir {str(self.path.parent)!r} is in use by another grutrain process "
                                f"(PID {holder}); wait for it or choose another run.dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays, harmless
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def clear_run_dir(path: Path) -> None:
    """--overwrite: remove an earlier run's files (the caller holds the lock)."""
    for child in path.iterdir():
        if child.name == LOCK_FILE:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
