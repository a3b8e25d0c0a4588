"""Conformalised quantile regression (CQR, Romano, Patterson and Candes 2019) on the validation block.

The quantile heads of a GRU trained on the pinball loss are overconfident: on Tourism's validation
block their 80% interval covered 61% (docs/forecasting.md). CQR widens (or narrows) each central
interval [lo, hi] by the (1 - alpha) quantile Q of the validation scores
    E = max(lo - y, y - hi) / scale
where scale is the series' MASE scale, so one Q serves series of any size; Q is taken per step
ahead and per target (errors grow with the step). With n scores the quantile level is
ceil((n + 1)(1 - alpha)) / n, which gives coverage >= 1 - alpha on exchangeable data.
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


def cqr_offsets(forecast: np.ndarray, actual: np.ndarray, mask: np.ndarray, scale: np.ndarray,
                quantiles) -> np.ndarray:
    """[intervals, H, T] Q from validation forecasts [W, H, T, Q], actual/mask [W, H, T], scale [W, 1, T]."""
    pairs = interval_pairs(quantiles)
    H, T = actual.shape[1:]
    out = np.zeros((len(pairs), H, T))
    s = safe_scale(scale)
    for p, (lo, hi, nominal) in enumerate(pairs):
        scores = np.maximum(forecast[..., lo] - actual, actual - forecast[..., hi]) / s
        for k in range(H):
            for j in range(T):
                cells = scores[:, k, j][mask[:, k, j] & np.isfinite(scores[:, k, j])]
                if cells.size:
                    level = min(1.0, math.ceil((cells.size + 1) * nominal) / cells.size)
                    out[p, k, j] = np.quantile(cells, level, method="higher")
    return out


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
