"""Many series in one long-format CSV (data.id_column): one row per (series id, time step).

Each series is read, sorted by time and split on its own: the blocks [train | val | test] are
cut by time within each series, blanks are filled within each series' blocks, and each series
is normalised by the mean and standard deviation of its own training rows (a global model then
sees every series on one scale; the held-out rows never reach the normalisation).

The series are laid end to end in one array of rows; `offsets` say where each begins, and a
window never crosses from one series into the next. A single-series CSV is a panel of one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from grutrain.data.timeseries import SeriesTable, check_columns, fill_missing, read_series_csv, split_blocks, window_starts
from grutrain.errors import GrutrainError


@dataclass
class Panel:
    ids: list[str]  # one per series ("" for a single-series CSV)
    tables: list[SeriesTable]  # one per series, rows sorted by time
    blocks: list[tuple[slice, slice, slice] | None]  # per series: train, val, test rows (None: unsplit)

    @property
    def offsets(self) -> list[int]:
        return [int(x) for x in np.cumsum([0] + [len(t) for t in self.tables])[:-1]]

    @property
    def values(self) -> np.ndarray:
        return np.concatenate([t.values for t in self.tables])

    @property
    def observed(self) -> np.ndarray:
        return np.concatenate([t.observed for t in self.tables])

    def row_series(self) -> np.ndarray:
        """[N] the index of each row's series."""
        return np.repeat(np.arange(len(self.tables)), [len(t) for t in self.tables])

    def starts(self, which: str, input_len: int, horizon: int, history: int) -> np.ndarray:
        """Window starts (rows of the concatenated array) of block `which` (train, val, test, train+val, all) of every
        series."""
        out = []
        for offset, table, blocks in zip(self.offsets, self.tables, self.blocks):
            if which == "all" or blocks is None:
                lo, hi = 0, len(table)
            elif which == "train+val":  # data.refit: the final fit, on every row before the test block
                lo, hi = blocks[0].start, blocks[1].stop
            else:
                block = dict(zip(("train", "val", "test"), blocks))[which]
                lo, hi = block.start, block.stop
            out.append(offset + window_starts(lo, hi, input_len, horizon, history))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def load_panel(cfg, path=None, role: str = "data.path", split: bool = True) -> Panel:
    """The series of a forecast CSV, each with blanks handled and (split=True) its own time blocks."""
    columns = list(cfg.target_columns) + list(cfg.input_columns) + list(cfg.known_columns)
    check_columns(cfg)
    id_column = cfg.id_column
    if id_column is not None and id_column in columns + ([cfg.time_column] if cfg.time_column else []):
        raise GrutrainError(f"data.id_column {id_column!r} is also a target, input or time column; "
                            "the id column only names each row's series")
    table = read_series_csv(path or cfg.path, columns, cfg.time_column, cfg.missing, role=role, id_column=id_column)
    if id_column is None:
        parts = [("", table)]
    else:
        if cfg.time_column is None:
            raise GrutrainError("data.id_column needs data.time_column: the rows of each series are ordered by time")
        ids = np.asarray(table.ids)
        parts = [(name, table.take(np.flatnonzero(ids == name))) for name in dict.fromkeys(table.ids)]
    tables, blocks = [], []
    for name, part in parts:
        if cfg.missing != "interpolate":
            part = fill_missing(part, cfg.missing)  # drop changes the row count: split after it
        these = split_blocks(len(part), cfg.val_fraction, cfg.test_fraction, cfg.val_rows, cfg.test_rows) \
            if split else None
        part = fill_missing(part, cfg.missing, list(these) if these else None)
        if these is not None and pads_short_series(cfg):
            part, these = pad_front(part, these, _rows_needed(cfg), max([1, *cfg.seasons]))
        tables.append(part)
        blocks.append(these)
    return Panel([name for name, _ in parts], tables, blocks)


def pads_short_series(cfg) -> bool:
    """A panel on the competition protocol (data.val_rows / data.test_rows) pads its short series (pad_front);
    predict then pads an --input series shorter than the model reads in the same way."""
    return cfg.id_column is not None and (cfg.val_rows, cfg.test_rows) != (None, None)


def _rows_needed(cfg) -> int:
    """Training rows one window needs at most: its inputs, one season before them, its targets."""
    return cfg.input_len + max([1, *cfg.seasons]) + cfg.horizon


def pad_front(table: SeriesTable, blocks: tuple[slice, slice, slice], need: int, season: int = 1):
    """A panel's short series (the shortest Tourism series has 14 training rows) padded at the front to
    `need` training rows, so that it still gives one training window: the padding repeats the series'
    first whole season (its first value when shorter), is marked unobserved and is never a target, a
    normalisation row or a MASE row (the training block starts after it)."""
    train = blocks[0]
    pad = need - (train.stop - train.start)
    if pad <= 0 or train.stop - train.start < 1:
        return table, blocks
    period = season if season <= train.stop - train.start else 1
    source_rows = np.arange(-pad, 0) % period  # row -k takes the row k rows before the end of the first period
    values = np.concatenate([table.values[source_rows], table.values])
    observed = np.concatenate([np.zeros((pad, values.shape[1]), bool), table.observed])
    lines = np.concatenate([np.full(pad, table.lines[0]), table.lines])
    times = list(table.times)
    if times:  # the padding's times (read only by calendar inputs) continue the first spacing backwards
        try:
            step = times[1] - times[0]
            times = [times[0] - step * (pad - i) for i in range(pad)] + times
        except (IndexError, OverflowError, ValueError):
            return table, blocks  # no time before the first: _check_lengths says the series is too short
    ids = [table.ids[0]] * pad + list(table.ids) if table.ids else []
    padded = SeriesTable(table.source, table.columns, values, observed, lines, table.time_column, table.time_axis,
                         times, ids)
    shifted = tuple(slice(b.start + pad, b.stop + pad) for b in blocks)
    return padded, shifted

