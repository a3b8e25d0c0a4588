"""Where a command may write a file it was asked for (export, predict, init, lr-find, eval --plot).

Only to a new path or over a regular file; never over one of the command's own inputs (exporting a
checkpoint onto itself), never through a symbolic link, never onto a FIFO, a device or a directory.
Checked before any work starts, so a refusal costs nothing; written to a temporary file and renamed,
so a failure leaves the old file as it was.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterable

from grutrain.errors import GrutrainError
from grutrain.files.atomic import write_file
from grutrain.files.inputs import _kind_of


def check_output(path: str | Path, option: str, inputs: Iterable[str | Path | None] = ()) -> Path:
    """`path` if a command may write it, else a GrutrainError naming `option` and the fix."""
    path = Path(path)
    name = str(path)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise GrutrainError(f"{option} {name!r}: {exc.strerror or exc}; give another path") from None
    if info is not None:
        if stat.S_ISLNK(info.st_mode):
            raise GrutrainError(f"{option} {name!r} is a symbolic link; grutrain does not write through links: "
                                "give the real path or a new file name")
        if not stat.S_ISREG(info.st_mode):
            raise GrutrainError(f"{option} {name!r} is {_kind_of(info.st_mode)}; give a new file name "
                                "or a regular file to replace")
        for source in inputs:
            if source is not None and _same_file(path, Path(source)):
                raise GrutrainError(f"{option} {name!r} is this command's input {str(source)!r}; "
                                    "give another file name so the input is kept")
    parent = path.parent
    if not parent.is_dir():
        raise GrutrainError(f"{option} {name!r}: the directory {str(parent)!r} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise GrutrainError(f"{option} {name!r}: the directory {str(parent)!r} is not writable; give another path")
    return path


def check_output_dir(path: str | Path, option: str) -> Path:
    """A directory a command may create or write new files in: not a file, a link, nor unwritable."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise GrutrainError(f"{option} {str(path)!r} is not a directory; give a directory")
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise GrutrainError(f"{option} {str(path)!r} is below the file {str(existing)!r}; give a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise GrutrainError(f"{option} {str(path)!r}: {str(existing)!r} is not writable; give another directory")
    return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def write_output(path: str | Path, content: str | bytes, option: str,
                 inputs: Iterable[str | Path | None] = ()) -> Path:
    """Write `content` to `path` (checked as above) through files.atomic (temporary file, rename)."""
    path = check_output(path, option, inputs)
    return write_file(path, content, option)
