"""The one way grutrain writes a file: a temporary file beside the target, fsync, rename, directory fsync.

A crash at any moment leaves the old file or the new one, never a torn one. The temporary's name,
`.NAME.grutrain-PID-RANDOM.tmp`, is unique (two processes writing the same target never share
one) and says who made it: the next write into that directory (and the next eval, export, sample
or predict of a checkpoint there) removes the temporaries whose process is gone (a SIGKILL mid-write leaves one),
and never touches any other file. Round two's checkpoint writer named its temporaries
`.last.pt.XXXXXXXX.tmp` (tempfile.mkstemp), without the PID: those are removed only when they are
plainly stale, untouched for STALE_SECONDS and older than this process.

Any failure of a writer (an OSError, or a library's RuntimeError about a short write such as
torch's zip writer's "unexpected pos") becomes one GrutrainError naming the file and the fix;
the target is left as it was.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import stat
import time
from pathlib import Path
from typing import Callable

from grutrain.errors import GrutrainError

_TEMP = re.compile(r"^\..+\.grutrain-(\d+)-[0-9a-f]{8}\.tmp$")
# Round two's checkpoint temporaries: mkstemp's 8 characters between the checkpoint's name and ".tmp".
_OLD_CHECKPOINT_TEMP = re.compile(r"^\.(last|best|step-\d+)\.pt\.[a-z0-9_]{8}\.tmp$")
STALE_SECONDS = 600  # no writer leaves its temporary untouched this long
_STARTED = time.time()  # about when this process started: an older file is no write of ours
# What torch's (and other libraries') writers say when the disk refused bytes.
_SHORT_WRITE = re.compile(r"unexpected pos|write failed|failed writing|file write|short write|"
                          r"No space left|File too large|Disk quota", re.IGNORECASE)


def temp_path(path: Path) -> Path:
    """A fresh temporary name beside `path`, unique to this process and this write."""
    return path.with_name(f".{path.name}.grutrain-{os.getpid()}-{secrets.token_hex(4)}.tmp")


def is_write_failure(exc: BaseException) -> bool:
    """Whether `exc` is the disk refusing bytes (or a file), as opposed to a bug or an interrupt."""
    if isinstance(exc, OSError):
        return True
    return isinstance(exc, RuntimeError) and bool(_SHORT_WRITE.search(str(exc)))


def write_error(path: Path, exc: BaseException, what: str = "") -> GrutrainError:
    """One line: which file could not be written, why, and that the old one (if any) is intact."""
    text = str(exc).strip()
    reason = getattr(exc, "strerror", None) or (text.splitlines()[0][:120] if text else type(exc).__name__)
    short = None if isinstance(exc, OSError) else _SHORT_WRITE.search(text)
    if short:  # a library's own words (torch: "[enforce fail at inline_container.cc:672] . unexpected pos ...")
        detail = text[short.start():].splitlines()[0][:80]
        reason = f"the disk took only part of it: no space left, or over the file-size limit ({detail})"
    label = f"{what} {str(path)!r}" if what else repr(str(path))
    return GrutrainError(f"could not write {label}: {reason}; free some space (or raise the file-size limit) "
                         "and run it again (any earlier file there is untouched)")


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete grutrain's temporaries in `directory` whose writing process no longer exists (or, for round
    two's unnamed checkpoint temporaries, that are plainly stale); never any other file."""
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        if _is_dead_temporary(entry):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _is_dead_temporary(entry: os.DirEntry) -> bool:
    match = _TEMP.match(entry.name)
    if match:
        return not _alive(int(match.group(1))) and entry.is_file(follow_symlinks=False)
    if not _OLD_CHECKPOINT_TEMP.match(entry.name):
        return False
    try:
        info = entry.stat(follow_symlinks=False)
    except OSError:
        return False
    newest = min(time.time() - STALE_SECONDS, _STARTED)
    return stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid() and info.st_mtime < newest


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # ours: another write of this process may be using it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


class PendingFile:
    """A file being written under a temporary name; `commit()` renames it over the target.

    `with PendingFile(path) as pending:` discards the temporary if the block raises or
    never commits. Use it where the temporary must be checked (an export) before it replaces
    anything; `write_file` below is the common case.
    """

    def __init__(self, path: str | Path, what: str = ""):
        self.path, self.what = Path(path), what
        self.tmp = temp_path(self.path)
        self.committed = False

    def __enter__(self) -> "PendingFile":
        remove_stale_temporaries(self.path.parent)
        return self

    def write(self, writer: Callable[[object], None] | bytes | str) -> None:
        """Fill the temporary: with bytes, text, or `writer(binary_file)`; flushed and fsynced."""
        try:
            fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
            with os.fdopen(fd, "wb") as f:
                if callable(writer):
                    writer(f)
                else:
                    f.write(writer.encode("utf-8") if isinstance(writer, str) else writer)
                f.flush()
                os.fsync(f.fileno())
        except BaseException as exc:
            self.discard()
            if is_write_failure(exc):
                raise write_error(self.path, exc, self.what) from None
            raise

    def commit(self) -> Path:
        try:
            os.replace(self.tmp, self.path)
        except OSError as exc:
            self.discard()
            raise write_error(self.path, exc, self.what) from None
        self.committed = True
        fsync_directory(self.path.parent)
        return self.path

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)

    def __exit__(self, *exc) -> None:
        if not self.committed:
            self.discard()


def write_file(path: str | Path, content: bytes | str | Callable[[object], None], what: str = "") -> Path:
    """Write `path` atomically: bytes, UTF-8 text, or `content(binary_file)`."""
    with PendingFile(path, what) as pending:
        pending.write(content)
        return pending.commit()


def commit_together(*pending: PendingFile) -> None:
    """Rename several temporaries into place as one step for other grutrain processes: under an
    flock on their directory, so two writers of the same pair (a model and its JSON) never leave
    one's file beside the other's; and with SIGINT/SIGTERM held back until the last rename, so a
    signal never leaves one new file beside an old one (it takes effect right after)."""
    directory = pending[0].path.parent
    try:
        import fcntl

        fd = os.open(directory, os.O_RDONLY)
    except (ImportError, OSError):  # no flock here: rename without the guard
        fd = None
    held = _hold_signals()
    try:
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX)
        for each in pending:
            each.commit()
    finally:
        if fd is not None:
            os.close(fd)  # drops the flock
        if held is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)  # a held signal is delivered now


def _hold_signals():
    """Block SIGINT and SIGTERM for this thread; the previous mask, or None where that is not possible."""
    try:
        return signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    except (AttributeError, OSError, ValueError):  # no pthread_sigmask on this platform
        return None


def fsync_directory(directory: Path) -> None:
    """Make a rename durable; not possible on every platform or file system, so best effort."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
