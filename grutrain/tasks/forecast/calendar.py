"""Calendar inputs derived from a forecast CSV's time column: hour of day, day of week, day of
year (and minute of hour when rows are less than an hour apart), each as a sine/cosine pair.

These are known for the steps being forecast as well as for the past ones (darts' datetime
encoders, neuralforecast's future exogenous inputs), so the forecaster is given them for the
horizon too. A cycle is encoded as (sin 2 pi f, cos 2 pi f) of its fraction f in [0, 1): the
last hour of a day sits next to the first, and each pair is bounded in [-1, 1], so they need
no normalisation.

Times are read as written on the wall clock: "2000-06-05 17:30" is 17:30 whatever the time
zone, and an ISO time with an offset ("2021-03-28T03:00:00+02:00") is 03:00 in its own zone,
which is what drives demand across a daylight-saving change. Epoch seconds are read in UTC.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone

import numpy as np

from grutrain.errors import GrutrainError

# cycle name -> its length in seconds; a cycle is used when rows are closer than one cycle and the
# rows span at least two cycles (a day of year seen once cannot be learned: 12 weeks of summer
# demand would have the model extrapolate to unseen days of the year in its test block).
_CYCLES = {"minute_of_hour": 3600, "hour_of_day": 86400, "day_of_week": 7 * 86400, "day_of_year": 365.25 * 86400}


def as_datetimes(times: list, kind: str, epoch_seconds: bool, source: str) -> list[datetime]:
    """The parsed time column as datetimes: dates as they are, numbers as Unix epoch seconds."""
    if kind == "date":
        return list(times)
    if not epoch_seconds:
        raise GrutrainError(f"{source}: the time column holds numbers, not dates; set data.calendar=epoch_seconds "
                            "if they are Unix times, or data.calendar=none")
    try:
        return [datetime.fromtimestamp(float(t), tz=timezone.utc) for t in times]
    except (OverflowError, OSError, ValueError):
        raise GrutrainError(f"{source}: the time column's numbers are not Unix epoch seconds; "
                            "set data.calendar=none") from None


def choose_cycles(when: list[datetime]) -> list[str]:
    """The cycles the rows resolve and repeat (half-hourly over 12 weeks: minute, hour, weekday)."""
    if len(when) < 2:
        return []
    spacing = float(np.median([(b - a).total_seconds() for a, b in zip(when[:-1], when[1:])]))
    span = (when[-1] - when[0]).total_seconds()
    return [name for name, length in _CYCLES.items() if 0 < spacing < length and span >= 2 * length]


def feature_names(cycles: list[str]) -> list[str]:
    return [f"{c}_{f}" for c in cycles for f in ("sin", "cos")]


def calendar_features(when: list[datetime], cycles: list[str]) -> np.ndarray:
    """[N, 2 * len(cycles)] float32: sin and cos of each cycle's fraction, in feature_names order."""
    out = np.zeros((len(when), 2 * len(cycles)), dtype=np.float32)
    for i, t in enumerate(when):
        for c, cycle in enumerate(cycles):
            angle = 2 * math.pi * _fraction(t, cycle)
            out[i, 2 * c], out[i, 2 * c + 1] = math.sin(angle), math.cos(angle)
    return out


def _fraction(t: datetime, cycle: str) -> float:
    """Where `t` lies in the cycle, in [0, 1)."""
    day = (t.hour + t.minute / 60 + t.second / 3600) / 24
    if cycle == "minute_of_hour":
        return (t.minute + t.second / 60) / 60
    if cycle == "hour_of_day":
        return day
    if cycle == "day_of_week":
        return (t.weekday() + day) / 7
    year_days = 366 if (t.year % 4 == 0 and (t.year % 100 != 0 or t.year % 400 == 0)) else 365
    return (t.timetuple().tm_yday - 1 + day) / year_days
