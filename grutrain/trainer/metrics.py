"""Scalars to TensorBoard event files and to metrics.jsonl (the same numbers in both)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from grutrain.trainer.rundir import METRICS_FILE, open_run_file


class MetricsLogger:
    """Writes every scalar to TensorBoard and as `{"step", "tag", "value"}` lines to metrics.jsonl.

    On resume from step S, lines after S are dropped and TensorBoard purges its events after S,
    so a resumed run's logs read like an uninterrupted run's.
    """

    def __init__(self, run_dir: str | Path, resume_step: int | None = None, enabled: bool = True):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self.writer = None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if _step_of(line, resume_step + 1) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        from torch.utils.tensorboard import SummaryWriter  # slow import, only where logging happens

        purge = resume_step + 1 if resume_step is not None else None
        self.writer = SummaryWriter(log_dir=str(self.run_dir), purge_step=purge)
        self._file = open_run_file(self.path, "a")  # never through a symlink

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        for tag, value in scalars.items():
            value = float(value)
            self.writer.add_scalar(tag, value, step)
            # JSON has no NaN/inf; keep them as strings so the line stays valid JSON.
            self._file.write(json.dumps({"step": step, "tag": tag,
                                         "value": value if math.isfinite(value) else str(value)}) + "\n")
        self._file.flush()

    def text(self, step: int, tag: str, text: str) -> None:
        if self.enabled:
            # Markdown in TensorBoard's text plugin: indent to keep newlines and spacing as written.
            self.writer.add_text(tag, "    " + text.replace("\n", "\n    "), step)

    def figure(self, step: int, tag: str, figure) -> None:
        """A matplotlib figure as an image in TensorBoard (Images tab) under `tag` at `step`."""
        if self.enabled:
            from grutrain.plots import figure_to_image

            self.writer.add_image(tag, figure_to_image(figure), step, dataformats="HWC")

    def hparams(self, config_dict: dict) -> None:
        """The run's config values for TensorBoard's HParams dashboard."""
        if self.enabled:
            from grutrain.trainer.hparams import write_hparams

            write_hparams(self.writer, config_dict)

    def close(self) -> None:
        if self.enabled:
            self.writer.flush()
            self.writer.close()
            self._file.close()


def _step_of(line: str, default: int) -> int:
    """The step of a metrics line; `default` for a line torn by a crash mid-write."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return default


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
