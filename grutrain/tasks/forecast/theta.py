"""The Theta method (Assimakopoulos and Nikolopoulos 2000, in Hyndman and Billah's 2003 form), per series,
for data.theta_weight: a classical forecast the GRU's is combined with (a forecast combination).

On the history before a forecast origin (m: the longest of data.season):
1. if the season m > 1 and the lag-m autocorrelation is significant (90%, as in the M3/M4 benchmark), divide
   by classical multiplicative seasonal indices (centred moving average; additive when a value is <= 0);
2. simple exponential smoothing, alpha from a grid by in-sample one-step squared error, level started at y[0];
3. add half the slope b of the least-squares line through the deseasonalised rows:
       f(h) = level + b / 2 * (h - 1 + (1 - (1 - alpha)^n) / alpha)
4. put the season back.
"""

from __future__ import annotations

import numpy as np

ALPHAS = np.linspace(0.05, 1.0, 20)  # the SES grid


def seasonal_indices(y: np.ndarray, m: int, multiplicative: bool) -> np.ndarray:
    """[m] classical decomposition indices (position i = rows i, i+m, ...), normalised to mean 1 (or 0)."""
    kernel = np.full(m + 1, 1.0 / m) if m % 2 == 0 else np.full(m, 1.0 / m)
    if m % 2 == 0:
        kernel[0] = kernel[-1] = 0.5 / m  # the centred 2 x m moving average
    trend = np.convolve(y, kernel, mode="valid")
    offset = (len(kernel) - 1) // 2
    ratio = y[offset: offset + len(trend)] / trend if multiplicative else y[offset: offset + len(trend)] - trend
    phase = (np.arange(len(ratio)) + offset) % m
    index = np.bincount(phase, weights=ratio, minlength=m) / np.bincount(phase, minlength=m)
    return index / index.mean() if multiplicative else index - index.mean()


def is_seasonal(y: np.ndarray, m: int) -> bool:
    """The 90% test on the lag-m autocorrelation used by the M4 benchmarks."""
    n = len(y)
    if m <= 1 or n < 3 * m:
        return False
    d = y - y.mean()
    acf = np.array([np.dot(d[k:], d[: n - k]) for k in range(1, m + 1)]) / max(np.dot(d, d), 1e-300)
    limit = 1.645 * np.sqrt((1 + 2 * np.sum(acf[: m - 1] ** 2)) / n)
    return abs(acf[m - 1]) > limit


def ses(y: np.ndarray) -> tuple[float, float]:
    """(alpha, last level) of simple exponential smoothing with the alpha of least one-step squared error."""
    level = np.full(len(ALPHAS), y[0])
    sse = np.zeros(len(ALPHAS))
    for v in y[1:]:
        sse += (v - level) ** 2
        level += ALPHAS * (v - level)
    best = int(np.argmin(sse))
    return float(ALPHAS[best]), float(level[best])


def theta_forecast(y: np.ndarray, horizon: int, m: int = 1) -> np.ndarray:
    """[horizon] Theta forecast of the series y (1-d, no blanks)."""
    y = np.asarray(y, dtype=np.float64)
    if len(y) < 2:
        return np.full(horizon, y[-1] if len(y) else 0.0)
    multiplicative = bool(np.all(y > 0))
    index = None
    if is_seasonal(y, m):
        index = seasonal_indices(y, m, multiplicative)
        position = np.arange(len(y)) % m
        y = y / index[position] if multiplicative else y - index[position]
    alpha, level = ses(y)
    n = len(y)
    slope = np.polyfit(np.arange(n), y, 1)[0]
    h = np.arange(1, horizon + 1)
    f = level + slope / 2 * (h - 1 + (1 - (1 - alpha) ** n) / alpha)
    if index is not None:
        future = (n + h - 1) % m
        f = f * index[future] if multiplicative else f + index[future]
    return f
