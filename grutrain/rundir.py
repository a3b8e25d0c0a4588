"""Where a run's files go: a fresh runs/<name>-N per run unless run.dir names one."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from grutrain.errors import GrutrainError

RUNS_ROOT = Path("runs")
LAST_CHECKPOINT = Path("checkpoints") / "last.pt"
BEST_CHECKPOINT = Path("checkpoints") / "best.pt"


def holds_run(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def numbered_runs(name: str, root: Path = RUNS_ROOT) -> list[tuple[int, Path]]:
    pattern = re.compile(re.escape(name) + r"-(\d+)$")
    found = []
    if root.is_dir():
        for child in root.iterdir():
            match = pattern.match(child.name)
            if match and child.is_dir():
                found.append((int(match.group(1)), child))
    return sorted(found)


def resolve_run_dir(run_dir: str | None, name: str, *, resume: bool, overwrite: bool) -> Path:
    """The directory for this run, created; refuses to overwrite a run silently."""
    if resume and overwrite:
        raise GrutrainError("--resume and --overwrite contradict each other; give one of them")
    if run_dir is None:
        existing = numbered_runs(name)
        if resume:
            if not existing:
                raise GrutrainError(f"--resume: no run named {name!r} under {RUNS_ROOT}/ to resume; "
                                    "set run.dir to the run to continue")
            path = existing[-1][1]
        else:
            number = existing[-1][0] + 1 if existing else 1
            # mkdir without exist_ok claims the number, so parallel runs never share a directory.
            while True:
                path = RUNS_ROOT / f"{name}-{number}"
                try:
                    path.mkdir(parents=True)
                    return path
                except FileExistsError:
                    number += 1
    else:
        path = Path(run_dir)
        if path.exists() and not path.is_dir():
            raise GrutrainError(f"run.dir {str(path)!r} is a file; give a directory")
        if holds_run(path) and not (resume or overwrite):
            raise GrutrainError(f"run.dir {str(path)!r} already holds a run; pass --resume to continue it "
                                "or --overwrite to start it again")
        if overwrite and path.exists():
            shutil.rmtree(path)
    if resume and not (path / LAST_CHECKPOINT).is_file():
        raise GrutrainError(f"--resume: {str(path / LAST_CHECKPOINT)!r} not found; there is nothing to resume "
                            "(start without --resume)")
    path.mkdir(parents=True, exist_ok=True)
    return path
