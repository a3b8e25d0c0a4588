"""The time column of a forecast CSV: how its text reads as values that sort and step (numbers,
dates, datetimes with or without a UTC offset), and which cells count as missing
(data/timeseries.py reads the CSV)."""

from __future__ import annotations

import calendar
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

from grutrain.errors import GrutrainError

# Cells read as missing (case-insensitive), besides empty ones: what pandas and R write for NaN/NA.
MISSING_TOKENS = {"", "na", "n/a", "nan", "null", "none"}

_YYYYMMDD_RE = re.compile(r"^\d{8}$")
# Tried in order on the first time value; every other value must then parse the same way.
_DATE_FORMATS = [
    ("%Y%m%d", "YYYYMMDD"),
    ("%Y-%m-%d", "YYYY-MM-DD"),
    ("%Y-%m-%d %H:%M:%S", "YYYY-MM-DD HH:MM:SS"),
    ("%Y-%m-%dT%H:%M:%S", "YYYY-MM-DDTHH:MM:SS"),
    ("%Y-%m-%d %H:%M", "YYYY-MM-DD HH:MM"),
    ("%Y-%m-%dT%H:%M", "YYYY-MM-DDTHH:MM"),
    ("%Y-%m-%dT%H:%M:%S%z", "YYYY-MM-DDTHH:MM:SS+HH:MM"),  # ISO 8601 with a UTC offset (or Z)
    ("%Y-%m-%d %H:%M:%S%z", "YYYY-MM-DD HH:MM:SS+HH:MM"),
    ("%Y-%m-%dT%H:%M%z", "YYYY-MM-DDTHH:MM+HH:MM"),
    ("%Y-%m", "YYYY-MM"),
    ("%Y/%m/%d", "YYYY/MM/DD"),
]


# --------------------------------------------------------------------------- the time axis


@dataclass
class TimeAxis:
    """How a time column's text reads as values that sort and step.

    kind "number": numbers (years, seconds, ...), written back as integers when they all are;
    kind "date": dates in the strftime format `fmt` (8-digit integers such as 19580329 that are
    valid dates read as YYYYMMDD dates, so that steps are calendar steps).
    """

    kind: str
    fmt: str | None = None
    label: str = "a number"
    integral: bool = False

    @classmethod
    def candidates(cls, first: str) -> list["TimeAxis"]:
        """The readings of the first value, most specific first."""
        text = first.strip()
        found = []
        if _YYYYMMDD_RE.match(text) and _try_strptime(text, "%Y%m%d") is not None:
            found.append(cls("date", "%Y%m%d", "a date YYYYMMDD"))
        if _parse_number(text) is not None:
            found.append(cls("number"))
        for fmt, label in _DATE_FORMATS[1:]:
            if _try_strptime(text, fmt) is not None:
                found.append(cls("date", fmt, f"a date {label}"))
        return found

    def parse(self, text: str):
        """float or datetime, or None when `text` is not of this axis' kind."""
        text = text.strip()
        if self.kind == "date":
            return _try_strptime(text, self.fmt)
        return _parse_number(text)

    def format(self, value):
        if self.kind == "date":
            text = value.strftime(self.fmt)
            return int(text) if self.fmt == "%Y%m%d" else text
        if self.integral and float(value).is_integer():
            return int(value)
        return float(f"{value:.12g}")  # 2000.1 + 3 * 0.1 prints as 2000.4, not 2000.4000000000001

    def next_values(self, values: list, horizon: int) -> list | None:
        """The `horizon` times after the last of `values` (_next_values); one line when they pass the
        calendar's end (year 9999) instead of an OverflowError."""
        try:
            return self._next_values(values, horizon)
        except (OverflowError, ValueError):
            raise GrutrainError(f"the {horizon} times after the last one, {self.format(values[-1])}, pass the end of "
                                "the calendar (year 9999); give inputs that end earlier") from None

    def _next_values(self, values: list, horizon: int) -> list | None:
        """The `horizon` times after the last of `values`: last + k * the typical (median) spacing.

        Dates that all fall on the same day of the month (monthly, quarterly, yearly data) step by
        whole calendar months. None when no positive spacing can be inferred (one row, duplicates).
        """
        if len(values) < 2:
            return None
        if self.kind != "date":
            step = float(np.median(np.diff(np.asarray(values, dtype=np.float64))))
            if not step > 0:
                return None
            return [self.format(values[-1] + k * step) for k in range(1, horizon + 1)]
        same_day = len({(v.day, v.time()) for v in values}) == 1
        if same_day:
            months = np.diff([v.year * 12 + v.month for v in values])
            step_months = int(np.median(months))
            if step_months > 0 and np.all(months > 0):
                return [self.format(_add_months(values[-1], k * step_months)) for k in range(1, horizon + 1)]
        seconds = float(np.median([(b - a).total_seconds() for a, b in zip(values[:-1], values[1:])]))
        if not seconds > 0:
            return None
        step = timedelta(seconds=seconds)
        return [self.format(values[-1] + k * step) for k in range(1, horizon + 1)]


def _try_strptime(text: str, fmt: str):
    try:
        return datetime.strptime(text, fmt)
    except ValueError:
        return None


def _add_months(when: datetime, months: int) -> datetime:
    index = when.year * 12 + when.month - 1 + months
    year, month = divmod(index, 12)
    day = min(when.day, calendar.monthrange(year, month + 1)[1])
    return when.replace(year=year, month=month + 1, day=day)


def _parse_number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _is_missing(text: str) -> bool:
    return text.strip().lower() in MISSING_TOKENS


def _parse_times(cells: list[str], lines, source: str, time_column: str) -> tuple[TimeAxis, list]:
    """The first reading of the first cell under which every cell parses, and the parsed values."""
    candidates = TimeAxis.candidates(cells[0])
    if not candidates:
        raise GrutrainError(f"{source} line {lines[0]}, time column {time_column!r}: {cells[0].strip()!r} is "
                            "neither a number nor a date (YYYY-MM-DD, YYYYMMDD, YYYY-MM, ...)")
    failure = None
    for axis in candidates:
        times = [axis.parse(cell) for cell in cells]
        bad = next((i for i, t in enumerate(times) if t is None), None)
        if bad is None:
            axis.integral = axis.kind == "number" and all(float(t).is_integer() for t in times)
            return axis, times
        failure = failure or (axis, bad)
    axis, bad = failure
    raise GrutrainError(f"{source} line {lines[bad]}, time column {time_column!r}: {cells[bad].strip()!r} is not "
                        f"{axis.label} like the first value {cells[0].strip()!r}")
