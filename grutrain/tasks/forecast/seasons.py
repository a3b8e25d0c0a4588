"""data.season: auto -- the seasons of a series found from its time column, or from the
autocorrelation of its training rows (an explicit season list always wins).

Dated rows (or Unix times with data.calendar=epoch_seconds) take Prophet's choice from the spacing:
sub-daily rows a day and a week, daily rows a week and a year, weekly rows a year (52), monthly 12,
quarterly 4, yearly none; a season is kept only when the training rows hold two of it. Integer or
other numeric times (and no time column) take the lag with the highest autocorrelation of the
first differences (differencing removes a trend that would make every lag look correlated), when
that autocorrelation is at least MIN_ACF and a local peak: lag 4 on Tourism quarterly, 12 monthly.
"""

from __future__ import annotations

import numpy as np

from grutrain.tasks.forecast import calendar as cal

DAY, WEEK = 86400.0, 7 * 86400.0
MIN_ACF = 0.2


def from_spacing(seconds: float) -> list[float]:
    """Season lengths in rows for rows `seconds` apart (not yet rounded or checked against the data)."""
    if seconds <= 0:
        return []
    if seconds < 0.99 * DAY:
        return [DAY / seconds, WEEK / seconds]
    if seconds < 1.5 * DAY:
        return [7, 365]
    if 6 * DAY <= seconds <= 8 * DAY:
        return [52]
    if 27 * DAY <= seconds <= 32 * DAY:
        return [12]
    if 88 * DAY <= seconds <= 93 * DAY:
        return [4]
    return []


def from_acf(parts: list[np.ndarray], max_lag: int = 400) -> list[int]:
    """[lag] with the highest mean autocorrelation of the first differences over the series `parts`
    (1-d arrays of training rows), or [] when none stands out."""
    parts = [np.diff(p[np.isfinite(p)]) for p in parts]
    parts = [p - p.mean() for p in parts if len(p) >= 8 and p.std() > 0]
    if not parts:
        return []
    top = min(max_lag, max(len(p) for p in parts) // 2)
    acf = np.full(top + 2, np.nan)
    for lag in range(1, top + 2):
        values = [np.dot(p[lag:], p[:-lag]) / np.dot(p, p) for p in parts if len(p) > 2 * lag]
        if values:
            acf[lag] = np.mean(values)
    best, best_lag = MIN_ACF, None
    for lag in range(2, top + 1):
        a = acf[lag]
        if np.isfinite(a) and a >= best and a >= np.nan_to_num(acf[lag - 1], nan=-1) and \
                a >= np.nan_to_num(acf[lag + 1], nan=-1):
            best, best_lag = a, lag
    return [best_lag] if best_lag else []


def detect(tables, train_blocks, n_targets: int, epoch_seconds: bool) -> list[int]:
    """The seasons (rows) of a panel's series: from the time column when it holds dates, else the ACF."""
    longest = max(range(len(tables)), key=lambda i: len(tables[i]))
    table, train = tables[longest], train_blocks[longest]
    n_train = train.stop - train.start
    axis = table.time_axis
    if axis is not None and (axis.kind == "date" or epoch_seconds) and len(table) > 1:
        when = cal.as_datetimes(table.times, axis.kind, epoch_seconds, table.source)
        spacing = float(np.median([(b - a).total_seconds() for a, b in zip(when[:-1], when[1:])]))
        seasons = [int(round(s)) for s in from_spacing(spacing)]
        return [s for s in dict.fromkeys(seasons) if s > 1 and 2 * s <= n_train]
    parts = [t.values[b, 0] for t, b in zip(tables, train_blocks)]
    return from_acf(parts)
