"""Opening the files a command reads (data, checkpoints, configs, predict inputs): one checked way.

An input must be a regular file: a FIFO would block forever and a device (/dev/zero, /dev/urandom)
never ends. Its size is checked against the memory that is free before anything is read, and an
I/O error (EIO, EACCES) becomes one line naming the file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from grutrain.errors import GrutrainError

# Reading a data file holds its bytes, its decoded text, the token list and the tensors at once:
# a file may use at most this fraction of the free memory.
DATA_EXPANSION = 20
CHECKPOINT_EXPANSION = 3


def available_memory() -> int | None:
    """Bytes of memory free for this process (MemAvailable), or None where that cannot be known."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def format_bytes(count: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GB"


def _kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def open_input(path: str | Path, what: str, *, expansion: int = DATA_EXPANSION):
    """`path` opened for binary reading, after checking it is a regular file small enough to load.

    `what` names the input in messages, e.g. "data file" or "checkpoint".
    """
    name = str(path)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused just below.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise GrutrainError(f"{what} {name!r} not found; check the path") from None
    except OSError as exc:
        raise GrutrainError(f"cannot open {what} {name!r}: {exc.strerror or exc}; give a readable file") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise GrutrainError(f"{what} {name!r} is {_kind_of(info.st_mode)}; give a regular file")
        free = available_memory()
        if free is not None and info.st_size * expansion > free:
            raise GrutrainError(f"{what} {name!r} is {format_bytes(info.st_size)}, too large to load with "
                                f"{format_bytes(free)} of memory free; give a smaller file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_input(path: str | Path, what: str, *, expansion: int = DATA_EXPANSION) -> bytes:
    """All the bytes of a checked input file (see open_input); I/O errors become one line."""
    with open_input(path, what, expansion=expansion) as f:
        try:
            return f.read()
        except OSError as exc:
            raise GrutrainError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from None
        except MemoryError:
            raise GrutrainError(f"{what} {str(path)!r} does not fit in memory; give a smaller file") from None
