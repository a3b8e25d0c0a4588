"""Forecast error measures that compare across series and horizons: MASE, per-step MAE,
the pinball (quantile) loss and interval coverage.

MAE, RMSE and sMAPE live in data/timeseries.forecast_errors; these complete them. Every function
takes arrays on the original scale, `forecast`/`actual`/`mask` of shape [W, horizon, T] (windows,
steps ahead, targets) unless it says otherwise.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def seasonal_scale(train: np.ndarray, lag: int) -> np.ndarray:
    """The in-sample MAE of the seasonal-naive forecast with period `lag` on the training rows:
    mean |y_t - y_{t-lag}| per column ([N, T] -> [T]), the denominator of MASE (M4's definition,
    lag 1 for non-seasonal data). NaN where the training rows are fewer than lag + 1."""
    train = np.asarray(train, dtype=np.float64)
    if len(train) <= lag:
        return np.full(train.shape[1], np.nan)
    diffs = np.abs(train[lag:] - train[:-lag])
    return np.nanmean(diffs, axis=0)


def mase(forecast: np.ndarray, actual: np.ndarray, mask: np.ndarray, scale) -> float:
    """Mean absolute scaled error: each cell's absolute error divided by its series' `scale` (the
    in-sample seasonal-naive MAE: [T], or per window [W, 1, T] for several series), averaged over
    the scored cells of each target, then over the targets. Below 1: better than the in-sample
    seasonal naive forecast one step ahead."""
    scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), actual.shape)
    scaled = np.abs(forecast - actual) / np.where(scale > 0, scale, np.nan)
    per_target = []
    for j in range(actual.shape[-1]):
        cells = scaled[..., j][mask[..., j] & np.isfinite(scaled[..., j])]
        if cells.size:
            per_target.append(cells.mean())
    return float(np.mean(per_target)) if per_target else math.nan


def mae_by_step(forecast: np.ndarray, actual: np.ndarray, mask: np.ndarray) -> list[float]:
    """MAE at each step ahead (1..horizon), over windows and targets: how error grows with the step."""
    err = np.where(mask, np.abs(forecast - actual), 0.0)
    counts = mask.sum(axis=(0, 2))
    return [float(e / c) if c else math.nan for e, c in zip(err.sum(axis=(0, 2)), counts)]


def pinball_loss(quantile_forecast, actual, quantiles):
    """Mean pinball loss: quantile_forecast [..., Q], actual [...], quantiles [Q] (numpy or torch).

    For quantile q and error u = actual - forecast the loss is max(q * u, (q - 1) * u): an
    under-forecast costs q per unit, an over-forecast 1 - q, so its minimiser is the q-quantile.
    """
    if isinstance(quantile_forecast, torch.Tensor):
        q = torch.as_tensor(quantiles, dtype=quantile_forecast.dtype, device=quantile_forecast.device)
        u = actual.unsqueeze(-1) - quantile_forecast
        return torch.maximum(q * u, (q - 1) * u).mean()
    q = np.asarray(quantiles, dtype=np.float64)
    u = np.asarray(actual, dtype=np.float64)[..., None] - np.asarray(quantile_forecast, dtype=np.float64)
    return float(np.maximum(q * u, (q - 1) * u).mean())


def interval_coverage(lower: np.ndarray, upper: np.ndarray, actual: np.ndarray, mask: np.ndarray) -> float:
    """Share (0..1) of the scored cells whose actual value lies within [lower, upper]."""
    inside = (actual >= lower) & (actual <= upper)
    return float(inside[mask].mean()) if mask.any() else math.nan


def percentage_errors(forecast: np.ndarray, actual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sMAPE terms 200|y-f|/(|y|+|f|), 0 where both are 0; MAPE terms 100|y-f|/|y|, NaN where y = 0)
    per cell, in percent."""
    err = np.abs(forecast - actual)
    denom = np.abs(actual) + np.abs(forecast)
    smape = np.divide(200 * err, denom, out=np.zeros_like(err, dtype=np.float64), where=denom > 0)
    mape = np.divide(100 * err, np.abs(actual), out=np.full(err.shape, np.nan), where=actual != 0)
    return smape, mape


def series_average(cells: np.ndarray, mask: np.ndarray, groups: np.ndarray) -> float:
    """The mean over series of each series' mean cell ([W, H, T] cells, windows grouped by `groups` [W]):
    how the Tourism and M competitions aggregate MASE, sMAPE and MAPE (every series weighs the same,
    however many windows it has). Cells that are masked out or not finite are left out."""
    keep = mask & np.isfinite(cells)
    means = []
    for g in np.unique(groups):
        rows = groups == g
        for j in range(cells.shape[-1]):
            chosen = cells[rows][..., j][keep[rows][..., j]]
            if chosen.size:
                means.append(chosen.mean())
    return float(np.mean(means)) if means else math.nan
