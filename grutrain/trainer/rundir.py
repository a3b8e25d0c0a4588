"""Where a run's files go, and the run directory's lifecycle from claim to release.

Each run gets a fresh runs/<name>-N unless run.dir names one. A run directory is locked while a
process trains in it (an flock on `.lock`, released by the kernel when the process dies, so a
stale lock never blocks anyone).

--overwrite only ever replaces a directory grutrain made for a run (recognised by its own files),
never `.`, an ancestor of the working directory, the home directory or `/`. The old run is moved
aside into a hidden folder inside the run dir and deleted once the new run has written its first
checkpoint; any failure before that puts it back. Files grutrain creates in a run dir are opened
without following symlinks.

`RunDirectory` ties these together for `fit`: claim (and lock) on rank 0, every rank told the
directory or the reason there is none; the earlier run set aside when training begins; the
command's first checkpoint commits the directory to the new run. On the way out before that
commit, whatever the cause (a signal, a full disk at the first save, diverged training, a bug), it
is put back as the command found it (`Before`): new entries removed, config.yaml and summary.json
restored byte for byte, the lock file's text restored (or the lock file removed), and the
directories made for the run (runs/NAME-N, runs/) removed; an overwritten run put back. So a
failed start never leaves a directory that a rerun, --resume or --overwrite would refuse.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from grutrain.errors import GrutrainError, escaped
from grutrain.files.atomic import write_file

if TYPE_CHECKING:
    from grutrain.runtime import Distributed

# The files of a run directory.
RUNS_ROOT = Path("runs")
CHECKPOINTS = Path("checkpoints")
LAST_CHECKPOINT = CHECKPOINTS / "last.pt"
BEST_CHECKPOINT = CHECKPOINTS / "best.pt"
CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
LOCK_FILE = ".lock"
SET_ASIDE_PREFIX = ".overwritten-"
# Besides config.yaml, a run dir holds at least one of these once training has started.
RUN_MARKERS = (SUMMARY_FILE, METRICS_FILE, str(CHECKPOINTS))


class RunDirectory:
    """One run's directory from claim to release: `with RunDirectory(...) as directory:`.

    Entering claims it: rank 0 picks (or creates) and locks it, and every rank learns the path or
    the one-line reason there is none. `begin()` marks the moment training starts: --overwrite
    sets the earlier run aside then, not before, so bad input never touches it. `commit()` marks
    this command's first checkpoint (or its successful end): from then on the directory is the
    new run's, kept whatever happens. Leaving before that, on an interrupt or an error alike, puts
    the directory back as it was before the command (`Before`), and the message says so
    (`undone_by_interrupt`, `undone_by_failure`).
    """

    def __init__(self, run_dir: str | None, name: str, dist: Distributed, *, resume: bool, overwrite: bool):
        self.requested, self.name, self.dist = run_dir, name, dist
        self.resume, self.overwrite = resume, overwrite
        self.path: Path | None = None
        self.lock: RunLock | None = None  # rank 0's
        self.aside: Path | None = None  # the earlier run, while the new one has no checkpoint
        self.before: Before | None = None  # rank 0: the directory as this command found it
        self.begun = self.committed = False

    def __enter__(self) -> "RunDirectory":
        path, error = None, None
        if self.dist.is_main:
            try:
                above = existing_ancestor(Path(self.requested) if self.requested else RUNS_ROOT)
                path = resolve_run_dir(self.requested, self.name, resume=self.resume, overwrite=self.overwrite)
                self.before = Before(path, above)
                self.lock = RunLock(path).acquire()
            except GrutrainError as exc:
                error = str(exc)
        path, error = self.dist.broadcast((str(path) if path else None, error))
        if error:
            raise GrutrainError(error)
        self.path = Path(path)
        return self

    def begin(self) -> None:
        """Training starts: --overwrite moves the earlier run aside (restored unless a checkpoint replaces it)."""
        if self.overwrite and self.dist.is_main and holds_run(self.path):
            self.aside = set_aside_run(self.path)
        self.begun = True

    def commit(self) -> None:
        """This command wrote a checkpoint (or finished): the directory is the new run's from here on."""
        if not self.committed and self.dist.is_main:
            discard_set_aside(self.path)  # --overwrite: the run this one replaces can go now
            self.aside = None
        self.committed = True

    def undone_by_interrupt(self) -> str:
        """What an interrupt now leaves on disk, for its message (the undo itself happens on leaving)."""
        where = escaped(self.path)
        if self.resume:
            return f"run dir {where} is as it was; continue it with --resume"
        if self.before is not None and self.before.had_run:
            return f"the earlier run in {where} is as it was; start again with --overwrite"
        return "nothing was kept; start it again"

    def undone_by_failure(self) -> str:
        """What an error before this command's first checkpoint leaves on disk, for its message."""
        where = escaped(self.path)
        if self.resume:
            return f"no run was changed (run dir {where} is as it was); continue it with --resume"
        if self.before is not None and self.before.had_run:
            return f"no run was changed (the earlier run in {where} is as it was); start again with --overwrite"
        return "no run was changed; start it again"

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.dist.is_main or self.before is None:
            return
        keep = exc_type is None or self.committed  # else nothing of this command may stay
        if not keep and self.aside is not None:
            restore_set_aside(self.path, self.aside)
        if not keep:
            self.before.restore_contents()
        if self.lock is not None:
            if not keep:
                self.lock.restore(self.before.lock_text)
            self.lock.release()
        if not keep:
            self.before.remove_what_was_made()


class Before:
    """A run directory as a command found it, to put it back byte for byte: its entries, the small
    files a run rewrites at its start (config.yaml, summary.json), the lock file's text, and the
    directories (the run dir, runs/) that the command created."""

    def __init__(self, path: Path, existing_above: Path):
        self.path, self.existing_above = path, existing_above
        self.made_dir = existing_above != path and not _same(existing_above, path)
        self.entries = {child.name for child in path.iterdir()}
        self.had_run = any(name != LOCK_FILE for name in self.entries)
        self.files = {name: _read_regular(path / name) for name in (CONFIG_FILE, SUMMARY_FILE)}
        self.lock_text = _read_regular(path / LOCK_FILE)

    def restore_contents(self) -> None:
        for child in list(self.path.iterdir()):
            if child.name in self.entries or child.name == LOCK_FILE:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
        for name, content in self.files.items():
            if content is not None and _read_regular(self.path / name) != content:
                write_file(self.path / name, content)

    def remove_what_was_made(self) -> None:
        if self.lock_text is None:
            (self.path / LOCK_FILE).unlink(missing_ok=True)
        if not self.made_dir:
            return
        with contextlib.suppress(OSError):  # the run dir, then each parent made for it alone
            for directory in (self.path, *self.path.parents):
                if _same(directory, self.existing_above):
                    break
                directory.rmdir()


def existing_ancestor(path: Path) -> Path:
    """`path` or its nearest parent that exists now (what a run dir's creation will not have made)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return a == b


def _read_regular(path: Path) -> bytes | None:
    try:
        return path.read_bytes() if path.is_file() and not path.is_symlink() else None
    except OSError:
        return None


def holds_run(path: Path) -> bool:
    """Whether `path` is a directory that holds anything (a run, or someone else's files)."""
    try:
        return path.is_dir() and any(child.name != LOCK_FILE for child in path.iterdir())
    except OSError as exc:
        raise GrutrainError(f"cannot read run.dir {str(path)!r}: {exc.strerror or exc}; "
                            "choose a directory you can read") from None


def is_grutrain_run(path: Path) -> bool:
    """A directory grutrain made for a run: its config.yaml and a summary, metrics or checkpoints."""
    return ((path / CONFIG_FILE).is_file() and not (path / CONFIG_FILE).is_symlink()
            and any((path / marker).exists() for marker in RUN_MARKERS))


def protected_reason(path: Path) -> str | None:
    """Why `path` may never be overwritten, or None: `.`, an ancestor of it, the home directory, `/`."""
    try:
        target = path.resolve()
        cwd = Path.cwd().resolve()
    except (OSError, RuntimeError):
        return "it cannot be resolved"
    if target == cwd or target in cwd.parents:
        return "it is the working directory or one of its parents"
    if target == Path(target.anchor):
        return "it is the root directory"
    home = os.environ.get("HOME")
    if home and target == Path(home).resolve():
        return "it is the home directory"
    return None


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
        _check_can_be_a_directory(path)
        if holds_run(path):
            reason = protected_reason(path)
            if reason or not is_grutrain_run(path):
                why = reason or "it holds files that are not a grutrain run"
                raise GrutrainError(f"run.dir {str(path)!r} cannot hold this run: {why}; "
                                    "choose a new or empty directory, e.g. run.dir=runs/my-run")
            if not (resume or overwrite):
                raise GrutrainError(f"run.dir {str(path)!r} already holds a run; pass --resume to continue it "
                                    "or --overwrite to start it again")
    if resume and not (path / LAST_CHECKPOINT).is_file():
        raise GrutrainError(f"--resume: {str(path / LAST_CHECKPOINT)!r} not found; there is nothing to resume "
                            "(start without --resume)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GrutrainError(f"cannot create run.dir {str(path)!r}: {exc.strerror or exc}; "
                            "choose a directory you can write") from None
    return path


def _check_can_be_a_directory(path: Path) -> None:
    """run.dir, or a parent of it, must not be a file (or a link to one)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                where = "is a file" if candidate == path else f"is below the file {str(candidate)!r}"
                raise GrutrainError(f"run.dir {str(path)!r} {where}; give a directory")
            return


def open_run_file(path: Path, mode: str = "w"):
    """A text file inside a run dir opened for writing ("w") or appending ("a") without following a symlink."""
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | (os.O_APPEND if mode == "a" else os.O_TRUNC)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        raise GrutrainError(f"cannot write {str(path)!r}: {exc.strerror or exc} (a symbolic link or a directory is "
                            "never written through); remove it or choose another run.dir") from None
    return os.fdopen(fd, mode, encoding="utf-8")


def write_run_file(path: Path, text: str) -> None:
    """config.yaml, summary.json: replaced whole through files.atomic. A link or a directory there is
    refused (a rename would not follow it, but someone put it there: say so)."""
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise GrutrainError(f"cannot write {str(path)!r}: it is a symbolic link or not a regular file (one is never "
                            "written through); remove it or choose another run.dir")
    write_file(path, text)


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
        try:  # never through a symlink: that would truncate its target
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as exc:
            raise GrutrainError(f"cannot use the lock file {str(self.path)!r}: {exc.strerror or exc} (it must be a "
                                "plain file grutrain made); remove it and try again") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise GrutrainError(f"the lock file {str(self.path)!r} is not a regular file; remove it and try again")
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

    def restore(self, text: bytes | None) -> None:
        """Put back the text the lock file had before this command (an undone command changes nothing)."""
        if self._fd is not None and text is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
                os.pwrite(self._fd, text, 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays, harmless
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def set_aside_run(path: Path) -> Path:
    """--overwrite: move an earlier run's files into a hidden folder of the run dir (the caller holds the lock).

    `discard_set_aside` deletes them once the new run has a checkpoint; `restore_set_aside` puts them back.
    """
    aside = Path(tempfile.mkdtemp(prefix=SET_ASIDE_PREFIX, dir=path))
    for child in list(path.iterdir()):
        if child.name != LOCK_FILE and child != aside:
            os.rename(child, aside / child.name)
    return aside


def discard_set_aside(path: Path) -> None:
    """The new run has written a checkpoint: the run it replaced can go."""
    for child in path.glob(SET_ASIDE_PREFIX + "*"):
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)


def restore_set_aside(path: Path, aside: Path) -> None:
    """The new run failed before its first checkpoint: remove what it wrote, put the old run back."""
    if not aside.is_dir():
        return  # already discarded: the new run stands
    for child in list(path.iterdir()):
        if child.name == LOCK_FILE or child == aside:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    for child in list(aside.iterdir()):
        os.rename(child, path / child.name)
    aside.rmdir()


def keep_periodic_copy(run_dir: Path, step: int, keep: int) -> None:
    """Link last.pt as step-N.pt and delete all but the `keep` latest of those."""
    checkpoints = run_dir / CHECKPOINTS
    target = checkpoints / f"step-{step:08d}.pt"
    tmp = checkpoints / f".{target.name}.link"
    tmp.unlink(missing_ok=True)
    try:
        os.link(checkpoints / LAST_CHECKPOINT.name, tmp)  # files are replaced, never rewritten, so a link is safe
        os.replace(tmp, target)
    except OSError:
        shutil.copyfile(checkpoints / LAST_CHECKPOINT.name, target)
    for old in sorted(checkpoints.glob("step-*.pt"))[:-keep]:
        old.unlink()
