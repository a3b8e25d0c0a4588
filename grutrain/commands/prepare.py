"""`grutrain prepare CONFIG`: what fit would first do to the data, done ahead (a task that PreparesAhead:
lm tokenises its text into its token cache)."""

from __future__ import annotations

import signal
import time

from grutrain.errors import Interrupted
from grutrain.tasks import task_class
from grutrain.tasks.protocols import PreparesAhead, require
from grutrain.trainer.interrupts import Interrupts, signal_of


def prepare(cfg, progress: bool = True) -> dict:
    """The task's report of what it prepared (lm: the token cache of cfg.data.path), and how long it took."""
    task = task_class(cfg.task)
    require(task, PreparesAhead, "prepare")
    start = time.perf_counter()
    # SIGINT/SIGTERM raise Interrupted (trainer.interrupts): the cache's temporary (files.atomic) is
    # removed on the way out, where the default SIGTERM would leave a partial .bin behind.
    with Interrupts():
        try:
            info = task.prepare(cfg, progress=progress)
        except (Interrupted, KeyboardInterrupt) as exc:
            name = signal.Signals(signal_of(exc)).name
            raise Interrupted(signal_of(exc), f"prepare interrupted by {name}; no cache was written "
                                              "(nothing left behind); run it again") from None
    return {**info, "seconds": time.perf_counter() - start}
