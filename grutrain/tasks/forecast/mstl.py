"""MSTL (Bandara, Hyndman and Bergmeir 2021) with a simple exponential smoothing level, per series, for
data.mstl_weight: a classical forecast of several seasons the GRU's is combined with.

The decomposition is statsforecast's `MSTL` (which calls statsmodels' STL, Cleveland et al. 1990): seasons
in increasing length, each extracted by STL with seasonal window 7 + 4i (11 for the shortest, 15 for the
next, ...), a locally constant seasonal loess and locally linear trend and low-pass loess, five inner passes
and no robustness weights (statsmodels' default without `robust`), the whole set of seasons iterated twice.
The forecast is the last cycle of every seasonal component repeated, plus the level of the seasonally
adjusted series (trend + remainder) by simple exponential smoothing (statsforecast's AutoETS chose ETS(A,N,N)
or ETS(M,N,N) on half-hourly demand). Loess at every point (no jumps), as statsmodels does by default.
"""

from __future__ import annotations

import functools

import numpy as np

from grutrain.tasks.forecast.theta import ses

HISTORY_CYCLES = 15  # the longest season's seasonal window with two seasons (7 + 4 x 2): older cycles barely count


def _tricube(r: np.ndarray, h: np.ndarray) -> np.ndarray:
    """STL's neighbourhood weights: 1 within 0.001 h, (1 - (r/h)^3)^3 up to 0.999 h, then 0."""
    u = np.clip(r / np.maximum(h, 1e-300), 0.0, 1.0)
    return np.where(r <= 0.999 * h, np.where(r <= 0.001 * h, 1.0, (1 - u ** 3) ** 3), 0.0)


def _loess_at(y: np.ndarray, q: int, degree: int, xs: tuple | str) -> np.ndarray:
    """Loess of y [..., n] (positions 1..n) at the positions xs (a tuple, or "all": 1..n), each from its q
    nearest points (all of them when q >= n): [..., P]."""
    n = y.shape[-1]
    small = min(q, n) * (n if xs == "all" else len(xs)) <= 4096  # kept: a decomposition asks again at every pass
    index, w, reached, nearest = (_kept_loess_weights if small else _loess_weights)(n, q, degree, xs)
    out = (w * y[..., index]).sum(axis=-1)
    return out if reached.all() else np.where(reached, out, y[..., nearest])  # none in reach: STL keeps the value


def _loess_weights(n: int, q: int, degree: int, xs: tuple | str):
    """(indices [P, width], weights [P, width], any point in reach [P], nearest index [P]) of STL's loess
    at xs: they depend on the positions only."""
    xs = np.arange(1, n + 1, dtype=np.float64) if xs == "all" else np.asarray(xs, dtype=np.float64)
    width = min(q, n)
    left = np.ones(len(xs), dtype=np.int64) if q >= n else np.clip(xs.astype(np.int64) - (q + 1) // 2 + 1, 1, n - q + 1)
    pos = (left[:, None] + np.arange(width)).astype(np.float64)  # [P, width], 1-based
    h = np.maximum(xs - left, left + width - 1 - xs).astype(np.float64)
    if q > n:
        h += (q - n) // 2
    w = _tricube(np.abs(pos - xs[:, None]), h[:, None])
    total = w.sum(axis=1, keepdims=True)
    w = w / np.where(total > 0, total, 1.0)
    if degree == 1:
        a = (w * pos).sum(axis=1)
        c = (w * (pos - a[:, None]) ** 2).sum(axis=1)
        tilt = (np.sqrt(c) > 0.001 * (n - 1)) & (h > 0)
        b = np.where(tilt, (xs - a) / np.where(tilt, c, 1.0), 0.0)
        w = w * (b[:, None] * (pos - a[:, None]) + 1.0)
    return pos.astype(np.int64) - 1, w, total[:, 0] > 0, np.clip(xs.astype(np.int64), 1, n) - 1


_kept_loess_weights = functools.lru_cache(maxsize=512)(_loess_weights)  # small ones only: at most 32 MB


@functools.lru_cache(maxsize=64)
def _kernel_and_first_rows(q: int, degree: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For a loess of window q < n: the interior's tricube kernel [q], and the weights of the first (q - 1) / 2
    positions over the first q points, without [P, q] and with the local line [P, q], with the spread of
    their neighbourhoods [P] (STL drops the line where it is below 0.001 (n - 1)). The last positions are
    the mirror image of the first."""
    half = (q - 1) // 2
    kernel = _tricube(np.abs(np.arange(-half, half + 1, dtype=np.float64)), np.full(q, float(half)))
    xs = np.arange(1, half + 1, dtype=np.float64)
    pos = np.arange(1, q + 1, dtype=np.float64)[None, :]
    h = np.maximum(xs - 1, q - xs)[:, None]
    flat = _tricube(np.abs(pos - xs[:, None]), h)
    flat /= flat.sum(axis=1, keepdims=True)
    a = (flat * pos).sum(axis=1, keepdims=True)
    c = (flat * (pos - a) ** 2).sum(axis=1, keepdims=True)
    tilted = flat * ((xs[:, None] - a) / c * (pos - a) + 1.0) if degree == 1 else flat
    return kernel / kernel.sum(), flat, tilted, np.sqrt(c[:, 0])


def loess(y: np.ndarray, q: int, degree: int) -> np.ndarray:
    """STL's loess of y [..., n] at every position. Away from the ends the neighbourhood is symmetric, so the
    local line adds nothing and the smooth is one sliding product with the tricube kernel; the ends take
    their own weights."""
    n = y.shape[-1]
    if q >= n or n < 3:
        return _loess_at(y, q, degree, "all")
    half = (q - 1) // 2
    kernel, flat, tilted, spread = _kernel_and_first_rows(q, degree)
    if degree == 1:
        line = spread > 0.001 * (n - 1)
        ends = tilted if line.all() else np.where(line[:, None], tilted, flat)
    else:
        ends = flat
    out = np.empty(y.shape)
    if y.ndim == 1:  # the kernel is symmetric: a convolution is the sliding product, without a [n, q] view
        out[half: n - half] = np.convolve(y, kernel, mode="valid")
    else:
        out[..., half: n - half] = np.lib.stride_tricks.sliding_window_view(y, q, axis=-1) @ kernel
    out[..., :half] = y[..., :q] @ ends.T
    out[..., n - half:] = (y[..., n - q:][..., ::-1] @ ends.T)[..., ::-1]
    return out


def _cycle_subseries(detrended: np.ndarray, period: int, window: int) -> np.ndarray:
    """[n + 2 period] each phase's subseries smoothed by a locally constant loess and extended one cycle at
    both ends (STL's step 2); the phases whose subseries have equal lengths in one batch."""
    n = len(detrended)
    lengths = (n - 1 - np.arange(period)) // period + 1
    out = np.zeros(n + 2 * period)
    for k in np.unique(lengths):
        phases = np.flatnonzero(lengths == k)
        sub = detrended[phases[:, None] + period * np.arange(k)]  # [phases, k]
        smooth = np.empty((len(phases), k + 2))
        if k < 2:
            smooth[:] = sub[:, :1]
        else:
            smooth[:, 1:-1] = loess(sub, window, 0)
            # the cycles before the first and after the last, from the first / last min(window, k) points
            reach = min(window, k)
            smooth[:, 0] = _loess_at(sub[:, :reach], window, 0, (0,))[:, 0]
            smooth[:, -1] = _loess_at(sub[:, k - reach:], window, 0, (reach + 1,))[:, 0]
        out[phases[:, None] + period * np.arange(k + 2)] = smooth
    return out


def _moving_average(v: np.ndarray, length: int) -> np.ndarray:
    return np.convolve(v, np.full(length, 1.0 / length), mode="valid")


def stl(y: np.ndarray, period: int, seasonal: int, inner: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(seasonal, trend) of y by STL: locally constant seasonal loess of window `seasonal`, trend window the
    next odd integer from 1.5 period / (1 - 1.5 / seasonal), low-pass window the next odd from period + 1."""
    n = len(y)
    trend_window = int(np.ceil(1.5 * period / (1 - 1.5 / seasonal)))
    trend_window += trend_window % 2 == 0
    low_pass_window = period + 1 + (period % 2 == 1)
    trend = np.zeros(n)
    season = np.zeros(n)
    for _ in range(inner):
        cycles = _cycle_subseries(y - trend, period, seasonal)
        low_pass = loess(_moving_average(_moving_average(_moving_average(cycles, period), period), 3),
                         low_pass_window, 1)
        season = cycles[period: period + n] - low_pass
        trend = loess(y - season, trend_window, 1)
    return season, trend


def mstl(y: np.ndarray, periods: list[int], iterate: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """([seasons, n] seasonal components in increasing period, trend, remainder) of y."""
    periods = sorted(periods)
    seasonal = np.zeros((len(periods), len(y)))
    adjusted = np.asarray(y, dtype=np.float64).copy()
    trend = np.zeros(len(y))
    for _ in range(iterate if len(periods) > 1 else 1):
        for i, period in enumerate(periods):
            adjusted = adjusted + seasonal[i]
            seasonal[i], trend = stl(adjusted, period, 7 + 4 * (i + 1))
            adjusted = adjusted - seasonal[i]
    return seasonal, trend, adjusted - trend


def mstl_forecast(y: np.ndarray, horizon: int, periods: list[int]) -> np.ndarray:
    """[horizon] forecast of the series y (1-d, no blanks): the last cycle of each season that two cycles
    of y can estimate, plus the SES level of what remains. Only the last HISTORY_CYCLES longest seasons are
    decomposed, so that a long series costs no more per origin than 15 weeks of half-hours (about 20 ms)."""
    y = np.asarray(y, dtype=np.float64)
    periods = sorted(p for p in set(periods) if 1 < p and 2 * p <= len(y))
    if len(y) < 2:
        return np.full(horizon, y[-1] if len(y) else 0.0)
    if not periods:
        return np.full(horizon, ses(y)[1])
    y = y[-HISTORY_CYCLES * periods[-1]:]
    seasonal, trend, remainder = mstl(y, periods)
    steps = np.arange(horizon)
    future = sum(seasonal[i][-p:][steps % p] for i, p in enumerate(periods))
    return ses(trend + remainder)[1] + future
