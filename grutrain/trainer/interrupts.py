"""SIGINT and SIGTERM for the whole of `fit`: one handler, installed before the run directory is claimed.

Outside the loop's steps (setup, the final evaluation) a signal raises `Interrupted` at once, so
whatever runs then stops and the run directory is put back or kept (rundir.RunDirectory decides).
Inside `deferred()` (the loop: steps, validations, saves) it is only noted, and the loop stops at
the next step boundary with a checkpoint, so a step or a save is never torn; a second SIGINT there
interrupts at once, for a user who really wants out. Once one signal has raised, later ones are
only noted, so that cleanup is not interrupted in turn.
"""

from __future__ import annotations

import contextlib
import signal
import threading

from grutrain.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupts:
    """`with Interrupts() as interrupts:` around a fit; `interrupts.received` lists the signals seen."""

    def __init__(self):
        self.received: list[int] = []
        self.deferring = False
        self.armed = True  # False once a signal has raised (or cleanup began): then signals are only noted
        self.raised: int | None = None  # the signal whose Interrupted was raised, if one was
        self._previous: dict = {}

    def __enter__(self) -> "Interrupts":
        if threading.current_thread() is threading.main_thread():  # handlers live in the main thread only
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame) -> None:
        if self.deferring:
            if signum == signal.SIGINT and signal.SIGINT in self.received:
                self.received.append(signum)
                raise KeyboardInterrupt
            self.received.append(signum)
            return
        self.received.append(signum)
        if self.armed:
            self.armed, self.raised = False, signum
            raise Interrupted(signum)

    def disarm(self) -> None:
        """Cleanup begins (an error is propagating): from now on a signal is only noted."""
        self.armed = False

    @contextlib.contextmanager
    def deferred(self):
        """Signals are noted, not raised, inside the block; one noted there raises when it ends normally."""
        self.deferring = True
        try:
            yield self.received
        finally:
            self.deferring = False
        self.raise_pending()

    def raise_pending(self) -> None:
        if self.received and self.armed:
            self.armed = False
            raise Interrupted(self.received[0])


def signal_of(exc: BaseException) -> int:
    """The signal behind an interrupt: Interrupted's, or SIGINT for a KeyboardInterrupt."""
    return getattr(exc, "signum", signal.SIGINT)
