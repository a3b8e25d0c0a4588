"""`grutrain eval`: a checkpoint's metrics on a held-out split or on another data file, and its figure."""

from __future__ import annotations

import contextlib
import inspect
from pathlib import Path

from grutrain import plots
from grutrain.errors import GrutrainError
from grutrain.files.json_text import require_finite
from grutrain.files.outputs import check_output
from grutrain.runtime import resolve_device
from grutrain.tasks.checkpoints import OpenedCheckpoint, eval_target, open_checkpoint
from grutrain.tasks.protocols import Figures, require


@contextlib.contextmanager
def naming_the_file(path):
    """Prefix the checkpoint's path to a task's error: the user may have several open at once."""
    try:
        yield
    except GrutrainError as exc:
        raise GrutrainError(f"{path}: {exc}") from None


def evaluate_checkpoint(path, *, split: str = "val", data_path=None, device: str = "auto",
                        plot: str | Path | None = None, origins: int | None = None) -> dict:
    """The task's report (split, size, metrics, baselines) of a checkpoint on `split` or on all of `data_path`;
    with `plot`, the task's figure of the same data is written there too; `origins` (forecast): only the last
    N forecast origins of each series, one horizon apart (rolling-origin evaluation)."""
    if plot is not None:  # before the evaluation, not after it
        plots.require_matplotlib()
        check_output(plot, "--plot", inputs=[path, data_path])
    opened = open_checkpoint(path, resolve_device(device))
    with naming_the_file(path):
        if plot is not None:
            require(opened.task, Figures, "figure for --plot")
        target = eval_target(opened.task, split, data_path)
        if origins is None:
            report = opened.task.report(opened.model, target, opened.device)
        elif "origins" not in inspect.signature(opened.task.report).parameters:  # an ability, not a task name
            raise GrutrainError(f"--origins is for forecast checkpoints; this one is task {opened.cfg.task}")
        else:
            report = opened.task.report(opened.model, target, opened.device, origins=origins)
        require_finite(report, f"the metrics on {target}")  # never print nan
        result = {"checkpoint": str(path), "task": opened.cfg.task, "step": opened.step, **report}
        figure = opened.task.figure(opened.model, target, opened.device) if plot is not None else None
    if figure is not None:  # its write error names the figure's file, not the checkpoint
        plots.save_figure(figure, plot)
        result["plot"] = str(plot)
    return result


def checkpoint_figure(path, *, split: str = "val", data_path=None, device: str = "auto"):
    """The task's figure of a checkpoint's model on `split` (or on all of `data_path`)."""
    plots.require_matplotlib()
    opened: OpenedCheckpoint = open_checkpoint(path, resolve_device(device))
    with naming_the_file(path):
        require(opened.task, Figures, "figure")
        return opened.task.figure(opened.model, eval_target(opened.task, split, data_path), opened.device)
