"""Conformalised quantile regression (CQR, Romano, Patterson and Candes 2019) on the validation block.

The quantile heads of a GRU trained on the pinball loss are overconfident: on Tourism's validation
block their 80% interval covered 61% (docs/forecasting.md). CQR widens (or narrows) each central
interval [lo, hi] by the (1 - alpha) quantile Q of the validation scores
    E = max(lo - y, y - hi) / scale
where scale is the series' MASE scale, so one Q serves series of any size; Q is taken per step
ahead and per target (errors grow with the step). With n scores the quantile level is
ceil((n + 1)(1 - alpha)) / n, which gives coverage >= 1 - alpha on exchangeable data.

One validation block is one period of the calendar for every series of a panel, and its errors move
together: a hard year sets too wide a Q for an easy one. data.conformal_from pools the scores of the
validation blocks of earlier-origin checkpoints (each forecast by a model that did not train on it)
with this model's own, or gives a refit model (which has no held-out block) their scores.
"""

from __future__ import annotations

import math

import numpy as np


def interval_pairs(quantiles) -> list[tuple[int, int, float]]:
    """(lower index, upper index, nominal coverage) of each central interval of the quantile list."""
    qs = list(quantiles)
    return [(i, len(qs) - 1 - i, qs[-1 - i] - qs[i]) for i in range(len(qs) // 2)]


def safe_scale(scale: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)


def cqr_scores(forecast: np.ndarray, actual: np.ndarray, mask: np.ndarray, scale: np.ndarray,
               quantiles) -> np.ndarray:
    """[intervals, W, H, T] scores of validation forecasts [W, H, T, Q] (NaN where a cell is blank)."""
    s = safe_scale(scale)
    out = [np.maximum(forecast[..., lo] - actual, actual - forecast[..., hi]) / s
           for lo, hi, _ in interval_pairs(quantiles)]
    return np.where(mask[None], np.stack(out), np.nan) if out else np.zeros((0, *actual.shape))


def offsets_from_scores(scores: np.ndarray, quantiles) -> np.ndarray:
    """[intervals, H, T] Q from the scores [intervals, W, H, T] of one validation block or of several
    pooled (data.conformal_from): per step ahead and target, the CQR quantile of the finite scores."""
    pairs = interval_pairs(quantiles)
    H, T = scores.shape[2:]
    out = np.zeros((len(pairs), H, T))
    for p, (_, _, nominal) in enumerate(pairs):
        for k in range(H):
            for j in range(T):
                cells = scores[p, :, k, j][np.isfinite(scores[p, :, k, j])]
                if cells.size:
                    level = min(1.0, math.ceil((cells.size + 1) * nominal) / cells.size)
                    out[p, k, j] = np.quantile(cells, level, method="higher")
    return out


def cqr_offsets(forecast: np.ndarray, actual: np.ndarray, mask: np.ndarray, scale: np.ndarray,
                quantiles) -> np.ndarray:
    """[intervals, H, T] Q from validation forecasts [W, H, T, Q], actual/mask [W, H, T], scale [W, 1, T]."""
    return offsets_from_scores(cqr_scores(forecast, actual, mask, scale, quantiles), quantiles)


def apply_offsets(forecast: np.ndarray, offsets: np.ndarray, scale: np.ndarray, quantiles,
                  median_index: int) -> np.ndarray:
    """The forecast [W, H, T, Q] with each central interval moved out by offsets * scale (never
    across the median)."""
    out = forecast.copy()
    s = safe_scale(scale)
    median = forecast[..., median_index]
    for p, (lo, hi, _) in enumerate(interval_pairs(quantiles)):
        out[..., lo] = np.minimum(forecast[..., lo] - offsets[p] * s, median)
        out[..., hi] = np.maximum(forecast[..., hi] + offsets[p] * s, median)
    return out
