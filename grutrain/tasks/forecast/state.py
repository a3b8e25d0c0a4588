"""The forecast task's checkpoint state read back (normalisation, window layout, the held-out rows)
and the forecast of new rows for `grutrain predict` (task.py uses both)."""

from __future__ import annotations

import numpy as np
import torch

from grutrain.tasks.forecast.windows import WindowLayout
from grutrain.data.timeseries import SeriesTable, window_starts
from grutrain.errors import GrutrainError
from grutrain.tasks.forecast.panel import pad_front, pads_short_series
from grutrain.tasks.forecast.series import PreparedSeries, calendar_of


def rows_text(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def describe_window(layout: WindowLayout) -> str:
    return f"data.input_len={layout.input_len} + data.horizon={layout.horizon}"


def base_layout(cfg, anchor_lag: int = 1, n_calendar: int = 0, scale: tuple = ()) -> WindowLayout:
    d = cfg.data
    profile = d.profile_periods if d.anchor == "profile" and anchor_lag > 1 else 0
    level, recent = (d.profile_level, d.profile_recent) if profile else (0, 0)
    if recent and len(d.seasons) < 2:
        raise GrutrainError("data.profile_recent needs two seasons (e.g. data.season: [48, 336]): the shorter one's "
                            "recent shape is added to the longer one's profile; set data.profile_recent=0")
    return WindowLayout(d.input_len, d.horizon, len(d.target_columns), len(d.input_columns), len(d.known_columns),
                        n_calendar, anchor_lag, tuple(d.seasons), tuple(d.quantiles), scale, profile, level,
                        recent, d.transform, d.loss, d.theta_weight, d.mstl_weight)


def check_normalisation(task_state: dict, cfg) -> dict:
    norm = task_state.get("normalisation")
    columns = list(cfg.data.target_columns) + list(cfg.data.input_columns) + list(cfg.data.known_columns)
    ok = (isinstance(norm, dict) and norm.get("columns") == columns
          and all(isinstance(norm.get(k), list) and len(norm[k]) == len(columns)
                  and all(isinstance(v, float) for v in norm[k]) for k in ("mean", "std")))
    if not ok:
        raise GrutrainError("the checkpoint is damaged: it has no normalisation (mean and std) for the columns "
                            f"{', '.join(columns)}")
    return norm


def saved_layout(task_state: dict, cfg) -> tuple[WindowLayout, list[str], list[float]]:
    """(layout, calendar cycles, MASE scale) a checkpoint was trained with; a checkpoint from before
    anchoring and calendar inputs is the naive-anchored layout with no calendar (and no MASE scale)."""
    saved = task_state.get("forecast_layout")
    if saved is None:
        layout = base_layout(cfg)
        return layout, [], [float("nan")] * layout.n_targets
    try:
        saved = dict(saved)
        cycles, scale = list(saved.pop("calendar_cycles")), [float(v) for v in saved.pop("mase_scale")]
        layout = WindowLayout.from_dict(saved)
    except (TypeError, KeyError, ValueError):
        raise GrutrainError("the checkpoint is damaged: its forecast layout is unreadable") from None
    if layout.n_calendar != 2 * len(cycles) or len(scale) != layout.n_targets:
        raise GrutrainError("the checkpoint is damaged: its forecast layout does not fit its calendar inputs")
    return layout, cycles, scale


def _array(values) -> np.ndarray:
    """A checkpoint's tensor (on any device) or a table's array as a numpy array."""
    return values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


def stored_series(stored, several: dict | None, layout: WindowLayout, n_columns: int, split: str,
                  numbers) -> tuple[PreparedSeries, np.ndarray]:
    """(prepared series, window starts) of a held-out split from a checkpoint's eval_series.

    several: the task state's forecast_series (None: one series); numbers(ids) -> ([(mean, std)],
    [MASE scale]) of those series."""
    try:
        values, observed = _array(stored["values"]).astype(float), _array(stored["observed"]).astype(bool)
        calendar = (_array(stored["calendar"]).astype(np.float32) if "calendar" in stored
                    else np.zeros((len(values), 0), np.float32))
        if several is not None:
            rows = _array(stored["row_series"]).astype(np.int64)
            starts = _array(stored[f"{split}_starts"]).astype(np.int64)
        else:
            lo, hi = (int(v) for v in stored[split])
    except (TypeError, KeyError, AttributeError, ValueError):
        raise GrutrainError("the checkpoint is damaged: it holds no held-out series; pass --data") from None
    fits = values.ndim == 2 and values.shape == observed.shape and values.shape[1] == n_columns \
        and calendar.shape == (len(values), layout.n_calendar)
    if several is None:
        fits = fits and 0 <= lo <= hi <= len(values)
    else:
        fits = fits and rows.shape == (len(values),) and starts.ndim == 1 \
            and (len(starts) == 0 or 0 <= starts.min() <= starts.max() < len(values))
    if not fits:
        raise GrutrainError("the checkpoint is damaged: its held-out series does not fit its columns; pass --data")
    if several is None:
        (mean, std), scale = (part[0] for part in numbers([""]))
        series = PreparedSeries(values, observed, calendar, mean, std, layout, scale)
        return series, window_starts(lo, hi, layout.input_len, layout.horizon, layout.history)
    try:
        ids = [str(name) for name in several["ids"]]
        if len(rows) and not 0 <= rows.min() <= rows.max() < len(ids):
            raise ValueError
    except (TypeError, KeyError, ValueError):
        raise GrutrainError("the checkpoint is damaged: its per-series normalisation is unreadable") from None
    series_norm, series_scale = numbers(ids)
    if split == "test" and isinstance(several.get("mase_scale_test"), list):
        series_scale = several["mase_scale_test"]  # the scale of the rows before each test block
    series = PreparedSeries(values, observed, calendar, np.asarray([m for m, _ in series_norm])[rows],
                            np.asarray([sd for _, sd in series_norm])[rows], layout,
                            np.asarray(series_scale)[rows], rows, ids)
    return series, starts


def predict_series(model, cfg, table, mean, std, scale, layout: WindowLayout, cycles, input_path,
                   device, conformal=None) -> list[dict]:
    """The rows `predict` writes for one series: one per step ahead after the end of `table`."""
    need = layout.history
    if 0 < len(table) < need and pads_short_series(cfg.data):  # as its training block was at fit
        n = len(table)
        table, _ = pad_front(table, (slice(0, n), slice(n, n), slice(n, n)), need, max([1, *layout.seasons]))
    if len(table) < need:
        after = " after dropping rows with blanks" if cfg.data.missing == "drop" else ""
        which = f" (series {table.ids[0]!r})" if table.ids else ""
        raise GrutrainError(f"--input {input_path}{which} has {rows_text(len(table))}{after}; the model reads the "
                            f"last {need} (data.input_len, and one anchor season before them), so give at least {need}")
    times = table.time_axis.next_values(table.times, layout.horizon) if table.time_column else None
    # The horizon's rows are appended (zeros) for their calendar inputs; their values are never read.
    padded = np.concatenate([table.values, np.zeros((layout.horizon, table.values.shape[1]))])
    calendar = np.zeros((len(padded), 0), dtype=np.float32)
    if cycles:
        if times is None:
            raise GrutrainError(f"--input {input_path}: the times after its end cannot be inferred (one row or "
                                "repeated times), and the model needs them for its calendar inputs")
        future = [table.time_axis.parse(str(t)) for t in times]
        extended = SeriesTable(table.source, table.columns, padded, np.ones(padded.shape, bool), table.lines,
                               table.time_column, table.time_axis, list(table.times) + future)
        _, calendar = calendar_of(extended, cfg, cycles)
    observed = np.concatenate([table.observed, np.ones((layout.horizon, table.values.shape[1]), bool)])
    series = PreparedSeries(padded, observed, calendar, mean, std, layout, scale)
    forecast = series.forecast(model, np.array([len(table)]), device, conformal=conformal)[0]  # [H, T, Q]
    rows = []
    for k in range(layout.horizon):
        row = {"step": k + 1}
        if times is not None:
            row[table.time_column] = times[k]
        for j, target in enumerate(cfg.data.target_columns):
            row[target] = float(f"{forecast[k, j, layout.median_index or 0]:.7g}")
            for i, q in enumerate(layout.quantiles):
                row[f"{target}_q{q:g}"] = float(f"{forecast[k, j, i]:.7g}")
        rows.append(row)
    return rows
