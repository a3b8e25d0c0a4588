"""Figures where people would rather look than read: one per task for `grutrain eval --plot`, the
lr-find curve, and the same figures as TensorBoard images.

Every figure function takes plain numbers (lists or arrays) and returns a matplotlib Figure,
drawn on the Agg canvas (no display, no pyplot state, safe in a training process).
matplotlib is the `plot` extra: without it `require_matplotlib` raises a one-line GrutrainError.

What each task's figure shows and where its numbers come from (`plot_for_checkpoint`):
    lm        per_position_loss_figure: the mean next-token loss at each position of seq_len windows
              read from a zero state: how much each extra token of context helps
    forecast  forecast_figure: the one-step-ahead forecasts of the split against the actual series,
              with the naive (last value) and, given data.season, seasonal-naive forecasts
    classify  confusion_matrix_figure: true labels (rows) against predicted (columns)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from grutrain.errors import GrutrainError

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
    path = Path(path)
    if path.is_dir():
        raise GrutrainError(f"--plot {str(path)!r} is a directory; give a file name such as plot.png")
    formats = figure.canvas.get_supported_filetypes()
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in formats:
        raise GrutrainError(f"--plot {str(path)!r}: cannot tell the image format from the extension; "
                            f"use .png (or one of {', '.join(sorted(formats))})")
    try:
        figure.savefig(path)
    except OSError as exc:
        raise GrutrainError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    return path


def figure_to_image(figure) -> np.ndarray:
    """The rendered figure as an RGB array [height, width, 3] (uint8)."""
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[:, :, :3].copy()


def log_figure(metrics_logger, step: int, tag: str, figure) -> None:
    """The figure as an image in TensorBoard (Images tab) under `tag` at `step`.

    Call it from a task's on_evaluation, e.g. `log_figure(metrics, step, "val/confusion_matrix", fig)`;
    it does nothing on a logger that is disabled (the other ranks under torchrun).
    """
    if not getattr(metrics_logger, "enabled", True) or getattr(metrics_logger, "writer", None) is None:
        return
    metrics_logger.writer.add_image(tag, figure_to_image(figure), step, dataformats="HWC")


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
                    x: Sequence | None = None, title: str = "forecasts"):
    """Actual series against the forecasts, one panel per target (at most 4).

    actual, forecast, naive, seasonal_naive: [N] or [N, targets] on the original scale; x: [N] positions.
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


# --------------------------------------------------------------------------- the data behind them


@torch.no_grad()
def position_losses(model, tokens: torch.Tensor, seq_len: int, device, batch_size: int = 64) -> list[float]:
    """Mean next-token loss at each position 1..seq_len of the non-overlapping windows of `tokens`,
    every window read from a zero state (so position 1 has no context at all)."""
    from torch.nn import functional as F

    n = (len(tokens) - 1) // seq_len
    if n < 1:
        raise GrutrainError(f"the split has {len(tokens)} tokens, fewer than one window of data.seq_len={seq_len} + 1")
    inputs = tokens[: n * seq_len].view(n, seq_len)
    targets = tokens[1 : n * seq_len + 1].view(n, seq_len)
    was_training = model.training
    model.eval()
    total = torch.zeros(seq_len, dtype=torch.float64)
    for lo in range(0, n, batch_size):
        logits, _ = model(inputs[lo:lo + batch_size].to(device))  # [b, T, V]
        loss = F.cross_entropy(logits.float().transpose(1, 2), targets[lo:lo + batch_size].to(device),
                               reduction="none")  # [b, T]
        total += loss.double().sum(dim=0).cpu()
    model.train(was_training)
    return (total / n).tolist()


def _lm_figure(payload, model, cfg, split, device, data_path):
    from grutrain.data.lm_corpus import held_out
    from grutrain.data.text import long_tensor
    from grutrain.evaluate import evaluate_lm

    ids, name, _ = held_out(payload, cfg, split, data_path)
    tokens = long_tensor(ids)
    name = Path(name).name
    per_position = position_losses(model, tokens, cfg.data.seq_len, device, cfg.train.batch_size)
    carried = evaluate_lm(model, tokens, cfg.data.seq_len, cfg.train.batch_size, device)["loss"]
    unit = {"char": "character", "bytes": "byte", "bpe": "token"}.get(cfg.data.tokenizer, "word")
    return per_position_loss_figure(per_position, carried, unit=unit,
                                    title=f"{name}: loss by position in windows of {cfg.data.seq_len} {unit}s")


@torch.no_grad()
def forecast_data(model, values: np.ndarray, starts: np.ndarray, mean, std, spec, device) -> dict:
    """The one-step-ahead forecasts of the windows at `starts` (rows of `values`, original scale) with
    the actual values and the baselines: forecast_figure's arguments.

    spec: the forecast task's WindowSpec (input_len, horizon, n_targets, season); mean, std: the
    normalisation of every column.
    """
    from grutrain.data.timeseries import gather_windows, naive_forecast, seasonal_naive_forecast
    from grutrain.tasks.forecast import forecast_normalised, normalise

    was_training = model.training
    model.eval()
    x = gather_windows(normalise(values, mean, std), torch.from_numpy(starts),
                       torch.arange(-spec.input_len, 0)).to(device)  # [W, input_len, F]
    T = spec.n_targets
    predicted = forecast_normalised(model, x, spec).cpu().double().numpy()[:, 0, :]  # one step ahead: [W, T]
    model.train(was_training)
    seasonal = seasonal_naive_forecast(values, starts, spec.horizon, T, spec.season)[:, 0, :] if spec.season else None
    return {"actual": values[starts, :T], "forecast": predicted * np.asarray(std[:T]) + np.asarray(mean[:T]),
            "naive": naive_forecast(values, starts, spec.horizon, T)[:, 0, :], "seasonal_naive": seasonal,
            "x": starts - starts[0]}


def _forecast_figure(payload, model, cfg, split, device, data_path):
    from grutrain.data.timeseries import load_series, window_starts
    from grutrain.tasks.forecast import WindowSpec

    spec = WindowSpec.of(cfg)
    norm = payload.get("normalisation") or {}
    if not {"mean", "std"} <= set(norm):
        raise GrutrainError("the checkpoint is damaged: it has no normalisation (mean and std)")
    if data_path is not None:
        table, _ = load_series(cfg.data, path=data_path, role="--data", split=False)
        values, lo, hi, name = table.values, 0, len(table), Path(data_path).name
    else:
        series = payload.get("eval_series") or {}
        try:
            values = series["values"].double().numpy()
            lo, hi = (int(v) for v in series[split])
        except (KeyError, TypeError, AttributeError, ValueError):
            raise GrutrainError("the checkpoint holds no held-out series to plot; pass --data") from None
        name = split
    starts = window_starts(lo, hi, spec.input_len, spec.horizon, spec.history)
    if len(starts) == 0:
        raise GrutrainError(f"the {name} split holds no forecast window to plot")
    data = forecast_data(model, values, starts, norm["mean"], norm["std"], spec, device)
    ahead = f" (the first of each forecast's {spec.horizon} steps)" if spec.horizon > 1 else ""
    return forecast_figure(**data, names=cfg.data.target_columns, title=f"{name}: one-step-ahead forecasts{ahead}")


def _classify_figure(payload, model, cfg, split, device, data_path):
    from grutrain.tasks import task_module

    result = task_module("classify").evaluate_checkpoint(payload, model, cfg, split, data_path, device)
    matrix = result["confusion_matrix"]
    return confusion_matrix_figure(matrix["labels"], matrix["matrix"], title=f"{result['split']}: confusion matrix")


FIGURES = {"lm": _lm_figure, "forecast": _forecast_figure, "classify": _classify_figure}


def plot_for_checkpoint(payload: dict, model, cfg, split: str, device, data_path=None):
    """The task's figure for a trained model on its held-out `split` (or on all of `data_path`)."""
    require_matplotlib()
    make = FIGURES.get(cfg.task)
    if make is None:
        raise GrutrainError(f"--plot has no figure for task {cfg.task}; it draws lm, forecast and classify models")
    return make(payload, model, cfg, split, device, data_path)


def plot_checkpoint(path, *, split: str = "val", data_path=None, device: str = "auto"):
    """Load a checkpoint and draw its task's figure (see plot_for_checkpoint)."""
    from grutrain.checkpoint import load_checkpoint
    from grutrain.runtime import resolve_device
    from grutrain.tasks import load_trained_model

    require_matplotlib()
    dev = resolve_device(device)
    payload = load_checkpoint(path, map_location=dev)
    model, cfg = load_trained_model(payload, dev, source=str(path))
    try:
        return plot_for_checkpoint(payload, model, cfg, split, dev, data_path)
    except GrutrainError as exc:
        raise GrutrainError(f"{path}: {exc}") from None
