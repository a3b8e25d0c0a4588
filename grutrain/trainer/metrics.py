"""Scalars to TensorBoard event files and to metrics.jsonl (the same numbers in both)."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

from grutrain.files.atomic import write_error, write_file
from grutrain.trainer.rundir import METRICS_FILE, open_run_file


class MetricsLogger:
    """Writes every scalar to TensorBoard and as `{"step", "tag", "value"}` lines to metrics.jsonl.

    On resume from step S, lines after S are dropped and TensorBoard purges its events after S,
    so a resumed run's logs read like an uninterrupted run's. metrics.jsonl is never rewritten in
    place: until `commit()` (the resumed run's first checkpoint) new lines are held in memory and
    the file is untouched, so a resume that fails or is interrupted before then leaves it as it
    was; `commit()` writes the kept and the new lines through files.atomic, then appends.
    """

    def __init__(self, run_dir: str | Path, resume_step: int | None = None, enabled: bool = True):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self.writer = None
        if not enabled:
            return
        self.resume_step, self.dropped = resume_step, 0
        self._pending: list[str] | None = None  # lines not yet in the file (a resume before its commit)
        self._file = None
        if resume_step is not None and self.path.exists():
            lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
            self._pending = [line + "\n" for line in lines if _step_of(line, resume_step + 1) <= resume_step]
            self.dropped = len(lines) - len(self._pending)
        from torch.utils.tensorboard import SummaryWriter  # slow import, only where logging happens

        purge = resume_step + 1 if resume_step is not None else None
        self.writer = SummaryWriter(log_dir=str(self.run_dir), purge_step=purge)
        if self._pending is None:
            self._file = open_run_file(self.path, "a")  # never through a symlink

    def commit(self) -> str | None:
        """The resumed run is safely under way: replace metrics.jsonl with the kept lines and the new
        ones (temporary + rename), then append. Returns a line telling what was dropped, if anything."""
        if not self.enabled or self._pending is None:
            return None
        write_file(self.path, "".join(self._pending), "the metrics log")
        self._pending = None
        self._file = open_run_file(self.path, "a")
        if self.dropped:
            return (f"{METRICS_FILE}: dropped {self.dropped} records after step {self.resume_step} "
                    "(logged after the checkpoint this run resumed from)")
        return None

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        for tag, value in scalars.items():
            value = float(value)
            with self._tensorboard():
                self.writer.add_scalar(tag, value, step)
            # JSON has no NaN/inf; keep them as strings so the line stays valid JSON.
            line = json.dumps({"step": step, "tag": tag, "value": value if math.isfinite(value) else str(value)})
            if self._pending is not None:
                self._pending.append(line + "\n")
            else:
                self._file.write(line + "\n")
        if self._file is not None:
            self._file.flush()

    def text(self, step: int, tag: str, text: str) -> None:
        if self.enabled:
            # Markdown in TensorBoard's text plugin: indent to keep newlines and spacing as written.
            with self._tensorboard():
                self.writer.add_text(tag, "    " + text.replace("\n", "\n    "), step)

    def figure(self, step: int, tag: str, figure) -> None:
        """A matplotlib figure as an image in TensorBoard (Images tab) under `tag` at `step`."""
        if self.enabled:
            from grutrain.plots import figure_to_image

            with self._tensorboard():
                self.writer.add_image(tag, figure_to_image(figure), step, dataformats="HWC")

    def hparams(self, config_dict: dict) -> None:
        """The run's config values for TensorBoard's HParams dashboard."""
        if self.enabled:
            from grutrain.trainer.hparams import write_hparams

            with self._tensorboard():
                write_hparams(self.writer, config_dict)

    def flush(self) -> None:
        """Everything logged so far on disk (or the one-line error of the TensorBoard log)."""
        if self.enabled and self.writer is not None:
            with self._tensorboard():
                self.writer.flush()

    @contextlib.contextmanager
    def _tensorboard(self):
        """TensorBoard's writer thread reports a full disk on a later call, as a bare OSError: name the log."""
        try:
            yield
        except OSError as exc:
            raise write_error(self.run_dir / "events.out.tfevents.*", exc, "the TensorBoard log") from None

    def close(self) -> None:
        """Never raises: it runs on the way out of a run whose outcome (and its message) is decided."""
        if self.enabled:
            if self.writer is not None:
                with contextlib.suppress(OSError):
                    self.writer.flush()
                    self.writer.close()
            if self._file is not None:
                with contextlib.suppress(OSError):
                    self._file.close()  # lines still pending (no commit) are dropped: the file stays as it was


def _step_of(line: str, default: int) -> int:
    """The step of a metrics line; `default` for a line torn by a crash mid-write."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return default


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
