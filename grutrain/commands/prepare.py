"""`grutrain prepare CONFIG`: what fit would first do to the data, done ahead (a task that PreparesAhead:
lm tokenises its text into its token cache)."""

from __future__ import annotations

import time

from grutrain.tasks import task_class
from grutrain.tasks.protocols import PreparesAhead, require


def prepare(cfg, progress: bool = True) -> dict:
    """The task's report of what it prepared (lm: the token cache of cfg.data.path), and how long it took."""
    task = task_class(cfg.task)
    require(task, PreparesAhead, "prepare")
    start = time.perf_counter()
    info = task.prepare(cfg, progress=progress)
    return {**info, "seconds": time.perf_counter() - start}
