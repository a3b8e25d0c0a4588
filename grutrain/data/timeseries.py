"""Time series from a CSV for task forecast: reading, missing values, splits, windows,
normalisation, error metrics and the naive baselines (the time axis: data/time_axis.py).

A CSV has a header row. The columns a config names are read (targets, extra inputs, an optional
time column); every other column is ignored. Rows are sorted by the time column when there is one.

Windows. A window is known by `start`, the row of its first target: the model reads rows
[start - input_len, start) (targets and extra inputs) and predicts the targets of rows
[start, start + horizon). The rows are cut into contiguous blocks [train | val | test]. A training
window lies wholly inside the training block; a val (test) window has all its targets inside the
val (test) block, and may read inputs from the rows just before the block, so that the block's
first rows are predicted too. Targets never cross a block boundary, and interpolation of blanks
never reaches across one either.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from grutrain.data.time_axis import MISSING_TOKENS, TimeAxis, _is_missing, _parse_number, _parse_times  # noqa: F401
from grutrain.errors import GrutrainError
from grutrain.files.inputs import read_input


# --------------------------------------------------------------------------- reading


@dataclass
class SeriesTable:
    """The columns a forecast reads, one row per time step, sorted by time when there is a time column.

    values [N, F] float64 in feature order (targets, then extra inputs): NaN where the file had a
    blank until `fill_missing` fills them; observed [N, F] bool: False where the file had a blank.
    """

    source: str
    columns: list[str]
    values: np.ndarray
    observed: np.ndarray
    lines: np.ndarray  # [N] the file line of each row, for messages
    time_column: str | None = None
    time_axis: TimeAxis | None = None
    times: list = field(default_factory=list)  # parsed time values, one per row
    ids: list = field(default_factory=list)  # long format (data.id_column): the series of each row

    def __len__(self) -> int:
        return len(self.values)

    def take(self, rows) -> "SeriesTable":
        rows = np.asarray(rows, dtype=np.int64)
        times = [self.times[i] for i in rows] if self.times else []
        ids = [self.ids[i] for i in rows] if self.ids else []
        return SeriesTable(self.source, self.columns, self.values[rows], self.observed[rows], self.lines[rows],
                           self.time_column, self.time_axis, times, ids)


def read_series_csv(path: str | Path, columns: list[str], time_column: str | None, missing: str,
                    source: str | None = None, role: str = "data.path", id_column: str | None = None) -> SeriesTable:
    """Read `columns` (and `time_column`) of a CSV as numbers; sort by time; blanks stay NaN.

    `role` names where the file came from in messages (data.path, --input, --data). Rows with a
    blank time are dropped under missing=drop and refused otherwise. With `id_column` (long format,
    several series) the rows are sorted by (id, time) and `ids` holds each row's series.
    """
    path = Path(path)
    source = source or str(path)
    wanted = list(columns) + ([time_column] if time_column else []) + ([id_column] if id_column else [])
    header, rows, lines = _read_rows(_read_csv_text(path, source, role), source, wanted)
    values = _parse_values(rows, lines, [header.index(c) for c in columns], columns, source)
    table = SeriesTable(source, list(columns), values, ~np.isnan(values), np.asarray(lines, dtype=np.int64))
    if id_column is not None:
        table.ids = [row[header.index(id_column)].strip() for row in rows]
        blank_id = next((i for i, v in enumerate(table.ids) if _is_missing(v)), None)
        if blank_id is not None:
            raise GrutrainError(f"{source} line {lines[blank_id]}: the id column {id_column!r} is blank; "
                                "every row of a long-format CSV names its series")
    if time_column is None:
        return table
    return _sort_by_time(table, [row[header.index(time_column)] for row in rows], time_column, missing)


def _read_rows(text: str, source: str, wanted: list[str]) -> tuple[list[str], list[list[str]], list[int]]:
    """(header, rows, line number of each row): every row as wide as the header, blank lines skipped."""
    reader = csv.reader(text.splitlines(keepends=True))
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise GrutrainError(f"{source}: not a readable CSV ({exc})") from None
    if header is None or not any(h.strip() for h in header):
        raise GrutrainError(f"{source} is empty; a forecast CSV needs a header row and one row per time step")
    header = [h.strip() for h in header]
    absent = [c for c in wanted if c not in header]
    if absent:
        which = "columns" if len(absent) > 1 else "column"
        raise GrutrainError(f"{source} has no {which} {', '.join(repr(c) for c in absent)}; "
                            f"the columns present are {', '.join(header)}")
    duplicated = sorted({h for h in header if header.count(h) > 1 and h in wanted})
    if duplicated:
        raise GrutrainError(f"{source}: the header names column {duplicated[0]!r} more than once; rename one of them")
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                if len(header) > 1:
                    continue  # a blank line
                row = [""]  # one column: a blank line is a blank cell (trailing ones are dropped below)
            if len(row) != len(header):
                raise GrutrainError(f"{source} line {reader.line_num}: {len(row)} fields, but the header has "
                                    f"{len(header)}; every row needs one value per column")
            rows.append(row)
            lines.append(reader.line_num)
    except csv.Error as exc:
        raise GrutrainError(f"{source} line {reader.line_num}: not a readable CSV row ({exc})") from None
    while rows and len(header) == 1 and not rows[-1][0].strip():
        rows.pop()
        lines.pop()
    if not rows:
        raise GrutrainError(f"{source} has a header but no data rows; it needs one row per time step")
    return header, rows, lines


def _parse_values(rows: list[list[str]], lines: list[int], index: list[int], columns: list[str],
                  source: str) -> np.ndarray:
    """The chosen columns as floats [rows, columns]; a blank cell is NaN, anything else not a number an error."""
    values = np.full((len(rows), len(columns)), np.nan)
    for r, (row, line) in enumerate(zip(rows, lines)):
        for f, (name, i) in enumerate(zip(columns, index)):
            cell = row[i]
            if _is_missing(cell):
                continue
            value = _parse_number(cell.strip())
            if value is None:
                raise GrutrainError(f"{source} line {line}, column {name!r}: {cell.strip()!r} is not a number; "
                                    "fix the cell or leave it blank and set data.missing")
            values[r, f] = value
    return values


def _sort_by_time(table: SeriesTable, cells: list[str], time_column: str, missing: str) -> SeriesTable:
    """The rows sorted by (series id, time), with the parsed time axis; blank or repeated times refused."""
    source = table.source
    blank = [i for i, c in enumerate(cells) if _is_missing(c)]
    if blank:
        if missing != "drop":
            raise GrutrainError(f"{source} line {table.lines[blank[0]]}: the time column {time_column!r} is blank "
                                f"({len(blank)} blank in all); fill it in, or set data.missing=drop to drop those rows")
        keep = np.setdiff1d(np.arange(len(cells)), blank)
        if len(keep) == 0:
            raise GrutrainError(f"{source}: the time column {time_column!r} is blank in every row")
        table = table.take(keep)
        cells = [cells[i] for i in keep]
    axis, times = _parse_times(cells, table.lines, source, time_column)
    ids = table.ids or [""] * len(times)
    order = sorted(range(len(times)), key=lambda i: (ids[i], times[i]))
    for a, b in zip(order[:-1], order[1:]):
        if times[a] == times[b] and ids[a] == ids[b]:
            which = f" for id {ids[a]!r}" if table.ids else ""
            raise GrutrainError(f"{source}: the time {cells[a].strip()!r} appears twice{which} (lines {table.lines[a]} "
                                f"and {table.lines[b]}); each time step of a series needs one row")
    table = table.take(order)
    table.time_column, table.time_axis, table.times = time_column, axis, [times[i] for i in order]
    return table


def _read_csv_text(path: Path, source: str, role: str) -> str:
    if path.is_dir():
        raise GrutrainError(f"{role} {source!r} is a directory; give a CSV file")
    if not path.exists():
        raise GrutrainError(f"{role} {source!r} not found; give the path to a CSV file (e.g. data/sunspots.csv)")
    raw = read_input(path, role)  # a regular file that fits in memory; I/O errors as one line
    if b"\x00" in raw[:65536]:
        raise GrutrainError(f"{source} looks binary (it contains NUL bytes); give a CSV text file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise GrutrainError(f"{source} is not UTF-8 (bad byte at offset {exc.start}); convert it to UTF-8") from None
    if not text.strip():
        raise GrutrainError(f"{source} is empty; a forecast CSV needs a header row and one row per time step")
    return text


# --------------------------------------------------------------------------- missing values


def fill_missing(table: SeriesTable, missing: str, blocks: list[slice] | None = None) -> SeriesTable:
    """Apply data.missing: `error` refuses blanks, `drop` drops their rows, `interpolate` fills them.

    Interpolation is linear between the nearest observed values of the same column, and a run of
    blanks at an edge takes the nearest observed value. It works inside each of `blocks` (the
    train/val/test blocks) separately, so a filled value never borrows from another split.
    """
    blank = ~table.observed
    if not blank.any():
        return table
    if missing == "error":
        col = int(np.argmin([np.flatnonzero(blank[:, f])[0] if blank[:, f].any() else len(table)
                             for f in range(blank.shape[1])]))
        lines = sorted(int(x) for x in table.lines[blank[:, col]])
        more = int(blank.sum()) - len(lines)
        others = f", and {more} in other columns" if more else ""
        raise GrutrainError(
            f"{table.source}: column {table.columns[col]!r} has {len(lines)} blank cell{'s' if len(lines) > 1 else ''} "
            f"(first at line{'s' if len(lines) > 1 else ''} {', '.join(map(str, lines[:5]))}{', ...' if len(lines) > 5 else ''})"
            f"{others}; set data.missing=interpolate or data.missing=drop, or fill them in")
    if missing == "drop":
        return table.take(np.flatnonzero(~blank.any(axis=1)))
    values = table.values.copy()
    for block in blocks or [slice(0, len(table))]:
        part = values[block]
        for f in range(part.shape[1]):
            seen = ~np.isnan(part[:, f])
            if seen.all():
                continue
            if not seen.any():
                what = "the file" if blocks is None or len(blocks) == 1 else "a whole split (train, val or test)"
                raise GrutrainError(f"{table.source}: column {table.columns[f]!r} is blank throughout {what}; "
                                    "nothing to interpolate from")
            positions = np.arange(len(part))
            part[:, f] = np.interp(positions, positions[seen], part[seen, f])  # edges: nearest value
        values[block] = part
    return SeriesTable(table.source, table.columns, values, table.observed, table.lines, table.time_column,
                       table.time_axis, table.times, table.ids)


def split_blocks(n: int, val_fraction: float, test_fraction: float, val_rows: int | None = None,
                 test_rows: int | None = None) -> tuple[slice, slice, slice]:
    """Contiguous [train | val | test] blocks of rows, the last ones held out (as for text).

    val_rows / test_rows (the competition protocol: the last h rows of every series) replace the
    fractions when given."""
    n_test = int(round(n * test_fraction)) if test_rows is None else min(test_rows, n)
    n_val = int(round(n * val_fraction)) if val_rows is None else min(val_rows, n - n_test)
    n_train = n - n_val - n_test
    return slice(0, n_train), slice(n_train, n_train + n_val), slice(n_train + n_val, n)


def load_series(cfg, path: str | Path | None = None, role: str = "data.path", split: bool = True):
    """(table with blanks handled, (train, val, test) row blocks) for a ForecastDataConfig.

    With split=False the whole file is one block (eval --data, predict).
    """
    columns = list(cfg.target_columns) + list(cfg.input_columns) + list(getattr(cfg, "known_columns", []))
    check_columns(cfg)
    table = read_series_csv(path or cfg.path, columns, cfg.time_column, cfg.missing, role=role)
    if cfg.missing != "interpolate":
        table = fill_missing(table, cfg.missing)  # drop changes the row count: split after it
    blocks = split_blocks(len(table), cfg.val_fraction, cfg.test_fraction, getattr(cfg, "val_rows", None),
                          getattr(cfg, "test_rows", None)) if split else None
    table = fill_missing(table, cfg.missing, list(blocks) if blocks else None)
    return table, blocks


def check_columns(cfg) -> None:
    targets, inputs = list(cfg.target_columns), list(cfg.input_columns)
    known = list(getattr(cfg, "known_columns", []))
    for name, names in (("data.target_columns", targets), ("data.input_columns", inputs), ("data.known_columns", known)):
        repeated = sorted({c for c in names if names.count(c) > 1})
        if repeated:
            raise GrutrainError(f"{name} names {repeated[0]!r} twice; list each column once")
    both = [c for c in inputs if c in targets]
    if both:
        raise GrutrainError(f"data.input_columns repeats the target column {both[0]!r}; targets are inputs already, "
                            "drop it from data.input_columns")
    twice = [c for c in known if c in targets + inputs]
    if twice:
        raise GrutrainError(f"data.known_columns repeats {twice[0]!r}, a target or past-only input column; "
                            "list each column in one of data.target_columns, data.input_columns, data.known_columns")
    if cfg.time_column is not None and cfg.time_column in targets + inputs + known:
        raise GrutrainError(f"data.time_column {cfg.time_column!r} is also a target or input column; "
                            "the time column only orders the rows")


# --------------------------------------------------------------------------- windows and normalisation


def window_starts(lo: int, hi: int, input_len: int, horizon: int, history: int = 0) -> np.ndarray:
    """Starts (first target rows) of the windows whose targets lie in rows [lo, hi).

    A window reads input_len rows before its start, and `history` rows back for a baseline (the
    seasonal-naive forecast looks one season back); windows without those rows are left out.
    """
    first = max(lo, input_len, history)
    return np.arange(first, hi - horizon + 1, dtype=np.int64)


def check_normalisation(mean, std, what: str) -> None:
    """Refuse values whose mean or spread overflows, or that float32 cannot hold once normalised."""
    mean, std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
    scale = np.where(std > 0, std, 1.0)
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and (np.abs(mean) / scale < 1e30).all()
            and (np.abs(mean) < 1e38).all() and (std < 1e38).all()):
        raise GrutrainError(f"{what} hold values too large to normalise (the mean or standard deviation of a "
                            "column is not finite in float32); rescale the data, e.g. divide it by 1e6")


def fit_normalisation(values: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-column mean and standard deviation of the training rows (a constant column keeps std 1)."""
    with np.errstate(over="ignore", invalid="ignore"):
        mean = values.mean(axis=0)
        std = values.std(axis=0)
    check_normalisation(mean, std, "the training rows")
    std = np.where(np.isfinite(std) & (std > 1e-12 * np.maximum(np.abs(mean), 1.0)), std, 1.0)
    return [float(x) for x in mean], [float(x) for x in std]


def gather_windows(array, starts, offsets):
    """array[starts[:, None] + offsets]: [W, len(offsets), F] (numpy or torch)."""
    return array[starts[:, None] + offsets]


# --------------------------------------------------------------------------- metrics and baselines


def forecast_errors(forecast: np.ndarray, actual: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """MAE, RMSE and sMAPE of `forecast` against `actual` (same shape, original scale) over `mask`'s cells.

    sMAPE, symmetric mean absolute percentage error, in percent (0 to 200):
        sMAPE = 100 / N * sum |F - A| / ((|A| + |F|) / 2)
    over the N forecast cells, each cell's term 0 where A = F = 0. It is scale-free, so it
    compares series of different units; a forecast of F for an actual of 0 scores 200.
    """
    if mask is None:
        mask = np.ones(actual.shape, dtype=bool)
    f, a = forecast[mask].astype(np.float64), actual[mask].astype(np.float64)
    if f.size == 0:
        return {"mae": math.nan, "rmse": math.nan, "smape": math.nan}
    err = f - a
    denom = (np.abs(a) + np.abs(f)) / 2
    terms = np.divide(np.abs(err), denom, out=np.zeros_like(err), where=denom > 0)
    scale = power_of_two_scale(err)  # RMSE of errors near 1e300 (or 1e-300) without overflow (underflow)
    return {"mae": float(np.abs(err).mean()), "rmse": float(scale * np.sqrt(((err / scale) ** 2).mean())),
            "smape": float(100 * terms.mean())}


def power_of_two_scale(x: np.ndarray) -> float:
    """The power of two just above max |x| (1 for none, zeros or blanks). Dividing by it is exact, so a
    scale-equivariant computation on x / scale, times scale, is the same to the bit on ordinary data, and
    its squares neither overflow near 1e300 nor vanish near 1e-300."""
    top = float(np.max(np.abs(x))) if np.size(x) else 0.0
    return float(np.ldexp(1.0, np.frexp(top)[1])) if 0 < top < np.inf else 1.0


def naive_forecast(values: np.ndarray, starts: np.ndarray, horizon: int, n_targets: int) -> np.ndarray:
    """The last observed value repeated: [W, horizon, n_targets]."""
    last = values[starts - 1, :n_targets]  # [W, T]
    return np.repeat(last[:, None, :], horizon, axis=1)


def seasonal_naive_forecast(values: np.ndarray, starts: np.ndarray, horizon: int, n_targets: int,
                            season: int) -> np.ndarray:
    """Each step's value one season earlier (whole seasons back past the window's start when
    horizon > season, so only values before the start are used): [W, horizon, n_targets]."""
    k = np.arange(horizon)
    back = season * (k // season + 1)  # [H]
    return values[starts[:, None] + k - back][:, :, :n_targets]
