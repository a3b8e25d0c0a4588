"""Figures where people would rather look than read: pure drawing, no task, no model.

Every figure function takes plain numbers (lists or arrays) and returns a matplotlib Figure,
drawn on the Agg canvas (no display, no pyplot state, safe in a training process). The tasks
gather the numbers (Task.figure) and show the same figures in TensorBoard.
matplotlib is the `plot` extra: without it `require_matplotlib` raises a one-line GrutrainError.

    per_position_loss_figure   lm: the mean next-token loss at each position of seq_len windows read
                               from a zero state: how much each extra token of context helps
    forecast_figure            forecast: one-step-ahead forecasts against the actual series, with the
                               naive (last value) and seasonal-naive forecasts
    confusion_matrix_figure    classify: true labels (rows) against predicted (columns)
    lr_find_figure             lr-find: loss against learning rate, the suggestion marked
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from grutrain.errors import GrutrainError
from grutrain.files.atomic import write_file

PLOT_EXTRA_MESSAGE = "plots need the plot extra: pip install 'grutrain[plot]'"


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def require_matplotlib() -> None:
    if not have_matplotlib():
        raise GrutrainError(PLOT_EXTRA_MESSAGE)


def new_figure(width: float = 7.0, height: float = 4.0):
    """A Figure on the Agg canvas, outside pyplot (nothing global to close or leak)."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure, path: str | Path) -> Path:
    """Write the figure; the format follows the extension (.png, .svg, .pdf)."""
    # Drawn into memory, then written through files.atomic: a full disk never leaves half an image.
    return write_file(path, figure_bytes(figure, path), "figure")


def figure_bytes(figure, path: str | Path) -> bytes:
    """The figure drawn into memory in the format of `path`'s extension (.png, .svg, .pdf)."""
    path = Path(path)
    if path.is_dir():
        raise GrutrainError(f"--plot {str(path)!r} is a directory; give a file name such as plot.png")
    formats = figure.canvas.get_supported_filetypes()
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in formats:
        raise GrutrainError(f"--plot {str(path)!r}: cannot tell the image format from the extension; "
                            f"use .png (or one of {', '.join(sorted(formats))})")
    image = io.BytesIO()
    figure.savefig(image, format=suffix)
    return image.getvalue()


def figure_to_image(figure) -> np.ndarray:
    """The rendered figure as an RGB array [height, width, 3] (uint8)."""
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[:, :, :3].copy()


# --------------------------------------------------------------------------- the figures


def lr_find_figure(lrs: Sequence[float], losses: Sequence[float], smoothed: Sequence[float],
                   suggestion: float | None, min_loss_lr: float | None = None):
    """Loss against learning rate (log axis): raw losses faint, the smoothed curve, the suggestion marked."""
    figure = new_figure()
    ax = figure.add_subplot()
    ax.plot(lrs, losses, color="tab:blue", alpha=0.25, linewidth=0.8, label="loss")
    ax.plot(lrs, smoothed, color="tab:blue", linewidth=1.8, label="smoothed loss")
    if suggestion is not None:
        y = float(np.interp(math.log(suggestion), np.log(lrs), smoothed))
        ax.plot([suggestion], [y], "o", color="tab:red", markersize=8,
                label=f"suggestion {suggestion:.2g} (steepest descent)")
    if min_loss_lr is not None:
        ax.axvline(min_loss_lr, color="gray", linestyle=":", label=f"minimum at {min_loss_lr:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    # The loss explodes at the end; keep the interesting part in view.
    finite = [v for v in list(losses) + list(smoothed) if math.isfinite(v)]
    low, first = min(finite), smoothed[0]
    ax.set_ylim(low - 0.1 * abs(first - low) - 1e-3, max(first, low) + 0.5 * abs(first - low) + 1e-3)
    ax.set_title("learning-rate range test")
    ax.legend(loc="upper left", fontsize="small")
    ax.grid(True, which="both", alpha=0.3)
    return figure


def per_position_loss_figure(position_loss: Sequence[float], carried_loss: float | None = None,
                             unit: str = "token", title: str = "loss by position in the window"):
    """Mean loss at positions 1..T of windows read from a zero state; `carried_loss` as a reference line."""
    figure = new_figure()
    ax = figure.add_subplot()
    positions = np.arange(1, len(position_loss) + 1)
    ax.plot(positions, position_loss, marker="o", markersize=3, label="mean loss at this position")
    if carried_loss is not None:
        ax.axhline(carried_loss, color="tab:green", linestyle="--",
                   label=f"with the state carried from the text before ({carried_loss:.3f})")
    ax.set_xlabel(f"position in the window ({unit}s of context seen + 1)")
    ax.set_ylabel("cross-entropy (nats)")
    ax.set_title(title)
    ax.legend(fontsize="small")
    ax.grid(True, alpha=0.3)
    return figure


def forecast_figure(actual: Sequence, forecast: Sequence, naive: Sequence | None = None,
                    seasonal_naive: Sequence | None = None, names: Sequence[str] | None = None,
                    x: Sequence | None = None, title: str = "forecasts",
                    lower: Sequence | None = None, upper: Sequence | None = None):
    """Actual series against the forecasts, one panel per target (at most 4), the model's interval
    [lower, upper] shaded when given.

    actual, forecast, naive, seasonal_naive, lower, upper: [N] or [N, targets] on the original scale;
    x: [N] positions.
    """
    actual = np.asarray(actual, dtype=float)
    actual = actual[:, None] if actual.ndim == 1 else actual
    series = {"model": forecast, "naive (last value)": naive, "seasonal naive": seasonal_naive}
    series = {k: (np.asarray(v, dtype=float).reshape(actual.shape)) for k, v in series.items() if v is not None}
    panels = min(actual.shape[1], 4)
    names = list(names) if names is not None else [f"target {j}" for j in range(actual.shape[1])]
    x = np.arange(len(actual)) if x is None else np.asarray(x)
    figure = new_figure(8.0, 2.8 * panels + 0.6)
    styles = {"model": dict(color="tab:red", linewidth=1.4),
              "naive (last value)": dict(color="tab:gray", linestyle="--", linewidth=1.0),
              "seasonal naive": dict(color="tab:olive", linestyle=":", linewidth=1.0)}
    for j in range(panels):
        ax = figure.add_subplot(panels, 1, j + 1)
        if lower is not None and upper is not None:
            low, high = (np.asarray(v, dtype=float).reshape(actual.shape)[:, j] for v in (lower, upper))
            ax.fill_between(x, low, high, color="tab:red", alpha=0.2, linewidth=0, label="model interval")
        ax.plot(x, actual[:, j], color="black", linewidth=1.6, label="actual")
        for name, values in series.items():
            ax.plot(x, values[:, j], label=name, **styles[name])
        ax.set_ylabel(names[j])
        ax.grid(True, alpha=0.3)
        if j == 0:
            ax.set_title(title)
            ax.legend(fontsize="small", ncol=4)
    figure.axes[-1].set_xlabel("time step")
    return figure


def confusion_matrix_figure(labels: Sequence[str], matrix: Sequence[Sequence[int]], title: str = "confusion matrix"):
    """Counts with true labels as rows and predicted labels as columns; colour by row share."""
    counts = np.asarray(matrix, dtype=float)
    k = len(labels)
    if counts.shape != (k, k):
        raise ValueError(f"the matrix is {counts.shape}, expected {k} x {k} for {k} labels")
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = min(3.0 + 0.5 * k, 14.0)
    figure = new_figure(size + 1.0, size)
    ax = figure.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), [str(label) for label in labels], rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center")
    ax.set_yticks(range(k), [str(label) for label in labels])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 30:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center",
                        color="white" if share[i, j] > 0.5 else "black", fontsize="small")
    accuracy = counts.trace() / max(counts.sum(), 1)
    ax.set_title(f"{title} (accuracy {accuracy:.3f})")
    figure.colorbar(image, ax=ax, label="share of the true label's examples")
    return figure
