"""Starter configs for `grutrain init TASK`: one commented YAML per task (its folder's template.yaml),
each training as written on the data that ships with grutrain (run from its checkout; a task that
generates its data needs no files).

They are package data, so an installed grutrain has them. `{config}` in their comments becomes the
name of the file written, so its "Run:" lines can be pasted as they are.
"""

from __future__ import annotations

import os
from pathlib import Path

from grutrain.errors import GrutrainError
from grutrain.files.atomic import PendingFile
from grutrain.files.outputs import check_output
from grutrain.tasks import load_config, task_names, template

TASKS = task_names()


def starter_text(task: str, config_name: str | None = None) -> str:
    """The starter YAML for `task`, its comments naming `config_name` (default: `<task>.yaml`)."""
    if task not in TASKS:
        raise GrutrainError(f"task {task!r} has no starter config; expected one of {', '.join(TASKS)}")
    return template(task).replace("{config}", config_name or f"{task}.yaml")


def write_starter(task: str, output: str | Path | None = None) -> Path:
    """Write the starter config to `output` (default `<task>.yaml` here); never over an existing file."""
    path = Path(output) if output is not None else Path(f"{task}.yaml")
    text = starter_text(task, str(path))
    check_output(path, "--output")  # not a link, FIFO or device
    if os.path.lexists(path):
        raise _exists(path)
    # Written whole under a temporary name, then linked into place: os.link fails if the file
    # appeared meanwhile (never overwritten, even in a race) and a failure leaves no file at all.
    with PendingFile(path, "--output") as pending:
        pending.write(text)
        try:
            os.link(pending.tmp, path)
        except FileExistsError:
            raise _exists(path) from None
        except OSError:  # a file system without hard links: a rename, after one more look
            if os.path.lexists(path):
                raise _exists(path) from None
            pending.commit()
    return path


def _exists(path: Path) -> GrutrainError:
    return GrutrainError(f"{str(path)!r} already exists; grutrain init never overwrites a file: "
                         "give another --output or delete it first")


def missing_data(path: str | Path) -> str | None:
    """The written config's data.path when it is not there from the current directory, else None."""
    cfg = load_config(path)
    data_path = getattr(cfg.data, "path", None)
    if data_path is None or Path(data_path).exists():
        return None
    return data_path
