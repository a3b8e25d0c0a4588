"""The standard streams as the CLI finds them: closed, full, or unable to encode the output.

Each case ends in one line on stderr and exit 1 (never a traceback, never Python's
"Exception ignored" at exit), and a closed descriptor is pointed at /dev/null first so that no
file grutrain opens later can take its number and receive the output.
"""

from __future__ import annotations

import errno
import os
import sys
import threading


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def _to_devnull(fd: int) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    if null != fd:
        os.dup2(null, fd)
        os.close(null)


def prepare() -> str | None:
    """Make the streams safe to use; the problem to report (stdout closed) or None."""
    problem = None
    for fd in (0, 1, 2):
        if not _is_open(fd):
            _to_devnull(fd)
            if fd == 1:
                problem = "stdout is closed; run grutrain with stdout open (e.g. > /dev/null to discard it)"
    if sys.stderr is None or not _is_open(2):
        sys.stderr = open(os.devnull, "w", encoding="utf-8")
    # An error message must get out whatever stderr's encoding (PYTHONIOENCODING=ascii, LANG=C).
    reconfigure = getattr(sys.stderr, "reconfigure", None)
    if reconfigure is not None:
        try:
            reconfigure(errors="backslashreplace")
        except (ValueError, OSError):
            pass
    # A writer thread (TensorBoard's) that hits a full disk would print its own traceback; the
    # error reaches the main thread at the next write and is reported there, in one line.
    default_hook = threading.excepthook
    if not getattr(default_hook, "quiet_os_errors", False):  # once per process
        def quiet_os_errors(args) -> None:
            if not issubclass(args.exc_type, OSError):
                default_hook(args)

        quiet_os_errors.quiet_os_errors = True
        threading.excepthook = quiet_os_errors
    return problem


def finish_stdout() -> str | None:
    """Flush stdout; if that fails (a full disk, a closed pipe), the problem, and stdout silenced."""
    stream = sys.stdout
    if stream is None:
        return None
    try:
        stream.flush()
        return None
    except OSError as exc:
        silence_stdout()
        return describe_os_error(exc, "stdout")


def silence_stdout() -> None:
    """Point fd 1 at /dev/null so that the interpreter's last flush cannot fail again."""
    try:
        _to_devnull(1)
    except OSError:
        pass


def describe_os_error(exc: OSError, what: str | None = None) -> str:
    where = what or (repr(exc.filename) if exc.filename is not None else "the output")
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"cannot write {where}: {reason}; free some space (or write elsewhere) and try again"
    if exc.errno == errno.EPIPE:
        return f"cannot write {where}: {reason} (the reader went away)"
    return f"cannot use {where}: {reason}"


def describe_encode_error(exc: UnicodeEncodeError) -> str:
    encoding = getattr(sys.stdout, "encoding", None) or exc.encoding
    return (f"the output holds characters that {encoding} cannot show; "
            "set PYTHONIOENCODING=utf-8 (or a UTF-8 locale such as LANG=C.UTF-8)")
