"""What a person sees while training: a rich progress bar, plain log lines, or nothing."""

from __future__ import annotations

import sys
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn, TransferSpeedColumn)


_quiet = False  # `fit --quiet`: notes are not printed either


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def note(text: str, warning: bool = False) -> None:
    """A line on stdout, with the run's own output, about something done on the way (a token cache
    written), unless quiet; a warning (resuming on changed data) goes to stderr and shows even then."""
    from grutrain.errors import escaped

    if warning:
        print(f"note: {escaped(text)}", file=sys.stderr, flush=True)
    elif not _quiet:
        print(f"note: {escaped(text)}", flush=True)


class TrainingProgress:
    """mode: "auto" (a bar on a terminal, plain lines otherwise), "bar", "plain" or "none"."""

    def __init__(self, total_steps: int, start_step: int, mode: str = "auto"):
        if mode == "auto":
            mode = "bar" if sys.stdout.isatty() else "plain"
        self.mode = mode
        self.total = total_steps
        self.console = Console()
        self._bar = None
        if mode == "bar":
            self._bar = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} tok/s"),
                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=self.console,
            )
            self._task = self._bar.add_task("train", total=total_steps, completed=start_step, loss="-", speed="-")
            self._bar.start()

    def update(self, step: int, loss: float, tokens_per_s: float, lr: float) -> None:
        if self.mode == "bar":
            self._bar.update(self._task, completed=step, loss=f"{loss:.4f}", speed=f"{tokens_per_s:,.0f}")
        elif self.mode == "plain":
            print(f"step {step}/{self.total}  loss {loss:.4f}  lr {lr:.3g}  {tokens_per_s:,.0f} tok/s", flush=True)

    def message(self, text: str) -> None:
        if self.mode == "bar":
            self._bar.console.print(text, markup=False, highlight=False)
        elif self.mode == "plain":
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


@contextmanager
def byte_progress(label: str, total_bytes: int, enabled: bool = True):
    """A bar with bytes/s and the time left, on stderr when it is a terminal; yields advance(n_bytes)."""
    if not enabled or not sys.stderr.isatty():
        yield lambda n: None
        return
    bar = Progress(TextColumn(f"[bold]{label}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   TextColumn("eta"), TimeRemainingColumn(), console=Console(stderr=True), transient=True)
    task = bar.add_task(label, total=total_bytes)
    with bar:
        yield lambda n: bar.advance(task, n)
