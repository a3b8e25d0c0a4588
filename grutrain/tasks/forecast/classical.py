"""Classical forecasts from every window's origin, each on its own series' observed rows before it, and
their combination with the GRU's (data.theta_weight, data.mstl_weight: a forecast combination, as the M4
benchmarks and ES-RNN combine a statistical and a learned forecast)."""

from __future__ import annotations

from typing import Callable

import numpy as np

from grutrain.data.timeseries import power_of_two_scale


def classical_windows(method: Callable[[np.ndarray, int], np.ndarray], values: np.ndarray, observed: np.ndarray,
                      starts: np.ndarray, row_series: np.ndarray | None, horizon: int, n_targets: int) -> np.ndarray:
    """[W, horizon, T] method(history, horizon) from each window's origin, on its own series' observed rows."""
    out = np.zeros((len(starts), horizon, n_targets))
    firsts = {}
    if row_series is not None:
        change = np.flatnonzero(np.r_[True, row_series[1:] != row_series[:-1]])
        firsts = {int(row_series[i]): int(i) for i in change}
    for w, start in enumerate(np.asarray(starts)):
        first = firsts.get(int(row_series[start]), 0) if row_series is not None else 0
        for j in range(n_targets):
            keep = observed[first:start, j]
            history = values[first:start, j][keep]
            scale = power_of_two_scale(history)
            out[w, :, j] = method(history / scale, horizon) * scale
    return out


def combine(forecast: np.ndarray, parts: list[tuple[float, np.ndarray]], median_index: int | None) -> np.ndarray:
    """forecast [W, H, T, Q] moved so that its point becomes (1 - sum of weights) point + sum of weight x
    classical [W, H, T] over `parts`; every quantile moves by the same amount, so the intervals keep their
    width around the new point."""
    point = forecast[..., median_index or 0]
    shift = sum(weight * (classical - point) for weight, classical in parts)
    return forecast + np.asarray(shift)[..., None]
