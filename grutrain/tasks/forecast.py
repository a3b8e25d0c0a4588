"""Forecasting: from the last `input_len` steps of one or more series, the next `horizon` steps.

The model reads windows of the normalised columns (targets, then extra inputs) and its head
outputs all `horizon` x targets values at once from the GRU's last state (direct multi-step
forecasting). Each window is seen relative to its last observed value: the target inputs are
fed as their difference from it and the head predicts the change from it (in normalised units).
A head that outputs zero gives the naive forecast, so training starts near the baseline the model
must beat; and a series that trends out of the training range (CO2) never leaves the range of
inputs the model was trained on (Mauna Loa CO2, 13 weeks ahead: test MAE 0.45 ppm, against
0.85-1.9 ppm when the same model reads absolute values).

With data.anchor (default auto) the head predicts the residual over the baseline with the lowest
in-sample MAE on the training rows instead: with data.season [48, 336] on half-hourly demand that
is "the same half-hour last week" (data/forecast_windows.py). Calendar inputs from a date time
column and data.known_columns are fed for the horizon too; data.quantiles trains with the pinball
loss. Metrics (tasks/forecast_series.py) always come with the naive and every seasonal-naive
forecast on the same windows, the best one named as the baseline. Target cells that were blank in
the file (filled by interpolation) are not scored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from grutrain.data.batching import ShuffledBatches
from grutrain.data.forecast_windows import WindowLayout, add_anchor, choose_anchor_lag, residual_scale
from grutrain.data.panel import Panel, load_panel
from grutrain.data.timeseries import SeriesTable, fit_normalisation, window_starts
from grutrain.errors import GrutrainError
from grutrain.forecast_metrics import pinball_loss, seasonal_scale
from grutrain.model import SequenceModel
from grutrain.tasks.forecast_series import PreparedSeries, calendar_of, calendar_of_panel, saved_series


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def _describe_window(layout: WindowLayout) -> str:
    return f"data.input_len={layout.input_len} + data.horizon={layout.horizon}"


def base_layout(cfg, anchor_lag: int = 1, n_calendar: int = 0, scale: tuple = ()) -> WindowLayout:
    d = cfg.data
    return WindowLayout(d.input_len, d.horizon, len(d.target_columns), len(d.input_columns), len(d.known_columns),
                        n_calendar, anchor_lag, tuple(d.seasons), tuple(d.quantiles), scale)


class ForecastTask:
    name = "forecast"

    def __init__(self, cfg, saved: dict | None, rank: int, world_size: int):
        self.cfg = cfg
        d = cfg.data
        panel = load_panel(d)
        layout = base_layout(cfg)
        needed = layout.input_len + layout.horizon
        for name, table, (train_b, _, _) in zip(panel.ids, panel.tables, panel.blocks):
            what = f"series {name!r} of {d.path}" if name else str(d.path)
            if len(table) < needed:
                after = " after dropping rows with blanks" if d.missing == "drop" else ""
                raise GrutrainError(f"{what} has {_rows(len(table))}{after}; one window needs {needed} "
                                    f"({_describe_window(layout)}); lower them or give a longer series")
            if train_b.stop < needed:
                raise GrutrainError(f"the training block {'of series ' + repr(name) + ' ' if name else ''}has "
                                    f"{train_b.stop} of {len(table)} rows, fewer than the {needed} one window needs "
                                    f"({_describe_window(layout)}); lower data.val_fraction/data.test_fraction, "
                                    "data.input_len or data.horizon")
        self.columns, self.ids, T = panel.tables[0].columns, panel.ids, layout.n_targets
        # Each series is normalised by its own training rows ([S, F]); the held-out rows never reach it.
        series_norm = [fit_normalisation(t.values[blocks[0]]) for t, blocks in zip(panel.tables, panel.blocks)]
        if saved is not None:  # a resumed run keeps the normalisation and layout it was trained with
            norm = _check_normalisation(saved, cfg)
            layout, cycles, scale = _saved_layout(saved, cfg)
            series_norm, scale = saved_series(saved, panel.ids, norm, scale)
            cycles, calendar = calendar_of_panel(panel, cfg, cycles)
        else:
            cycles, calendar = calendar_of_panel(panel, cfg, None)
            train_norm = [(t.values[blocks[0], :T] - np.asarray(m[:T])) / np.asarray(sd[:T])
                          for t, blocks, (m, sd) in zip(panel.tables, panel.blocks, series_norm)]
            lag = choose_anchor_lag(train_norm, d.seasons, d.anchor)
            layout = base_layout(cfg, lag, calendar.shape[1], residual_scale(train_norm, lag))
            first_season = d.seasons[0] if d.seasons else 1
            scale = [[float(x) for x in seasonal_scale(t.values[blocks[0], :T], first_season)]
                     for t, blocks in zip(panel.tables, panel.blocks)]
        self.layout, self.cycles, self.panel = layout, cycles, panel
        rows = panel.row_series()
        self.series_norm, self.series_scale = series_norm, scale
        row_mean = np.asarray([m for m, _ in series_norm])[rows]  # [N, F]
        row_std = np.asarray([sd for _, sd in series_norm])[rows]
        self.series = PreparedSeries(panel.values, panel.observed, calendar, row_mean, row_std, layout,
                                     np.asarray(scale)[rows], rows, panel.ids)
        # One series: its normalisation as before; several: the first series' (the per-series ones are
        # in the checkpoint's forecast_series).
        self.mean, self.std = series_norm[0]
        self.norm = self.series.norm
        self.values, self.observed = self.series.values, self.series.observed
        self.blocks = {"val": panel.blocks[0][1], "test": panel.blocks[0][2]}  # the single series' blocks
        self.train_starts = torch.from_numpy(panel.starts("train", layout.input_len, layout.horizon, layout.history))
        if len(self.train_starts) == 0:
            raise GrutrainError(f"the training block has {panel.blocks[0][0].stop} rows, too few for one window with "
                                f"{layout.history} rows of history (data.input_len, and one anchor season before "
                                "them); set data.anchor=naive, lower data.input_len or give a longer series")
        self.eval_starts = {split: panel.starts(split, layout.input_len, layout.horizon, layout.history)
                            for split in ("val", "test")}
        if len(self.eval_starts["val"]) == 0:
            val_b = panel.blocks[0][1]
            raise GrutrainError(f"the validation block has {val_b.stop - val_b.start} rows, too few for one window "
                                f"(data.horizon={layout.horizon} targets, {layout.history} rows of history before them); "
                                "raise data.val_fraction or lower data.horizon")
        self.sampler = ShuffledBatches(len(self.train_starts), cfg.train.batch_size, cfg.train.seed + 1,
                                       self._make_batch, rank=rank, world_size=world_size, what="windows")
        self.carries_state = False
        self.items_per_batch = self.sampler.global_batch * layout.input_len  # time steps read

    def _make_batch(self, indices: torch.Tensor):
        starts = self.train_starts[indices]
        x, anchor = self.series.inputs(starts)
        return x, anchor, self.series.targets(starts)

    def build_model(self) -> SequenceModel:
        return _model(self.cfg, self.layout)

    def loss(self, model, batch, hidden):
        x, anchor, y = batch
        output, _ = model(x)
        forecast = add_anchor(output, anchor, self.layout)  # [B, H, T, Q]
        if self.layout.quantiles:
            return pinball_loss(forecast, y.float(), self.layout.quantiles), None
        return F.mse_loss(forecast[..., 0], y.float()), None

    def has_split(self, split: str) -> bool:
        return len(self.eval_starts[split]) > 0

    def evaluate(self, model, split: str, device, amp_dtype=None) -> dict[str, float]:
        metrics = self.series.score(model, self.eval_starts[split], device, amp_dtype)
        best = self.series.baselines(self.eval_starts[split], metrics["mae"])
        metrics["mae_vs_baseline"] = best["mae_vs_baseline"]
        return metrics

    def baselines(self) -> dict[str, float]:
        out = {}
        for split in ("val", "test"):
            if self.has_split(split):
                metrics = self.series.baselines(self.eval_starts[split])
                out.update({f"{split}/{k}": v for k, v in metrics.items() if isinstance(v, float)})
        return out

    def checkpoint_state(self) -> dict:
        # The held-out rows (and the history their first windows read) travel with the model,
        # so `grutrain eval` needs only the checkpoint.
        state = {
            "normalisation": {"columns": list(self.columns), "n_targets": self.layout.n_targets,
                              "mean": list(self.mean), "std": list(self.std)},
            "forecast_layout": {**self.layout.to_dict(), "calendar_cycles": list(self.cycles),
                                "mase_scale": list(self.series_scale[0])},
        }
        if len(self.ids) == 1:
            first = max(0, self.blocks["val"].start - self.layout.history)
            state["eval_series"] = {
                "values": torch.from_numpy(self.values[first:].copy()),
                "observed": torch.from_numpy(self.observed[first:].copy()),
                "calendar": torch.from_numpy(np.ascontiguousarray(self.series.calendar[first:])),
                **{split: [b.start - first, b.stop - first] for split, b in self.blocks.items()}}
            return state
        # Several series: every row (they are small), and per series its normalisation and MASE scale.
        state["forecast_series"] = {"ids": list(self.ids), "mean": [list(m) for m, _ in self.series_norm],
                                    "std": [list(sd) for _, sd in self.series_norm],
                                    "mase_scale": [list(x) for x in self.series_scale]}
        state["eval_series"] = {
            "values": torch.from_numpy(self.values.copy()), "observed": torch.from_numpy(self.observed.copy()),
            "calendar": torch.from_numpy(np.ascontiguousarray(self.series.calendar)),
            "row_series": torch.from_numpy(self.series.row_series.copy()),
            **{f"{split}_starts": torch.from_numpy(starts.copy()) for split, starts in self.eval_starts.items()}}
        return state

    def on_evaluation(self, model, device, step: int, metrics) -> None:
        from grutrain import plots

        if plots.have_matplotlib():  # the plot extra; without it TensorBoard just has no figure
            data = plots.forecast_data(model, self.series, self.eval_starts["val"], device)
            figure = plots.forecast_figure(**data, names=self.cfg.data.target_columns)
            plots.log_figure(metrics, step, "val/forecast", figure)

    def final_extras(self, model, device) -> dict:
        names = {split: self.series.baselines(self.eval_starts[split])["baseline"]
                 for split in ("val", "test") if self.has_split(split)}
        return {"baseline": names, "anchor_lag": self.layout.anchor_lag, "calendar": list(self.cycles)}


def _model(cfg, layout: WindowLayout) -> SequenceModel:
    model = SequenceModel(cfg.model, output_size=layout.n_outputs, input_size=layout.n_inputs, per_step=False)
    if layout.anchor_lag > 1 or layout.quantiles:
        # A zero head forecasts the anchor exactly: training starts from the baseline, not from noise
        # around it (measured on data/taylor.csv, see docs/forecasting.md).
        torch.nn.init.zeros_(model.head.weight)
        torch.nn.init.zeros_(model.head.bias)
    return model


def _check_normalisation(payload: dict, cfg) -> dict:
    norm = payload.get("normalisation")
    columns = list(cfg.data.target_columns) + list(cfg.data.input_columns) + list(cfg.data.known_columns)
    ok = (isinstance(norm, dict) and norm.get("columns") == columns
          and all(isinstance(norm.get(k), list) and len(norm[k]) == len(columns)
                  and all(isinstance(v, float) for v in norm[k]) for k in ("mean", "std")))
    if not ok:
        raise GrutrainError("the checkpoint is damaged: it has no normalisation (mean and std) for the columns "
                            f"{', '.join(columns)}")
    return norm


def _saved_layout(payload: dict, cfg) -> tuple[WindowLayout, list[str], list[float]]:
    """(layout, calendar cycles, MASE scale) a checkpoint was trained with; a checkpoint from before
    anchoring and calendar inputs is the naive-anchored layout with no calendar."""
    saved = payload.get("forecast_layout")
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


def build(cfg, saved, rank, world_size) -> ForecastTask:
    return ForecastTask(cfg, saved, rank, world_size)


def model_for_checkpoint(payload: dict, cfg) -> SequenceModel:
    _check_normalisation(payload, cfg)
    return _model(cfg, _saved_layout(payload, cfg)[0])


def _prepared_panel(panel: Panel, payload: dict, cfg, layout: WindowLayout, cycles, scale) -> PreparedSeries:
    norm = _check_normalisation(payload, cfg)
    series_norm, series_scale = saved_series(payload, panel.ids, norm, scale)
    _, calendar = calendar_of_panel(panel, cfg, cycles)
    rows = panel.row_series()
    return PreparedSeries(panel.values, panel.observed, calendar, np.asarray([m for m, _ in series_norm])[rows],
                          np.asarray([sd for _, sd in series_norm])[rows], layout, np.asarray(series_scale)[rows],
                          rows, panel.ids)


def series_for_checkpoint(payload: dict, cfg, split: str, data_path) -> tuple[PreparedSeries, np.ndarray, str]:
    """(prepared series, window starts, name) of a checkpoint's held-out split or of another CSV."""
    norm = _check_normalisation(payload, cfg)
    layout, cycles, scale = _saved_layout(payload, cfg)
    if data_path is not None:
        panel = load_panel(cfg.data, path=data_path, role="--data", split=False)
        series = _prepared_panel(panel, payload, cfg, layout, cycles, scale)
        starts = panel.starts("all", layout.input_len, layout.horizon, layout.history)
        if len(starts) == 0:
            raise GrutrainError(f"{data_path} has {_rows(max(len(t) for t in panel.tables))}"
                                f"{' in its longest series' if len(panel.ids) > 1 else ''}; evaluating one window needs "
                                f"{layout.history + layout.horizon} ({_describe_window(layout)} and "
                                f"{layout.history} rows of history for the anchor and the seasonal baselines)")
        return series, starts, str(data_path)
    stored = payload.get("eval_series")
    several = payload.get("forecast_series")
    try:
        values, observed = stored["values"].double().numpy(), stored["observed"].bool().numpy()
        calendar = stored["calendar"].numpy() if "calendar" in stored else np.zeros((len(values), 0), np.float32)
        if several is not None:
            rows = stored["row_series"].numpy()
            starts = stored[f"{split}_starts"].numpy()
        else:
            lo, hi = (int(v) for v in stored[split])
    except (TypeError, KeyError, AttributeError, ValueError):
        raise GrutrainError("the checkpoint is damaged: it holds no held-out series; pass --data") from None
    fits = values.ndim == 2 and values.shape == observed.shape and values.shape[1] == len(norm["columns"]) \
        and calendar.shape == (len(values), layout.n_calendar)
    if several is None:
        fits = fits and 0 <= lo <= hi <= len(values)
    else:
        fits = fits and rows.shape == (len(values),) and (len(starts) == 0 or 0 <= starts.min() <= starts.max() < len(values))
    if not fits:
        raise GrutrainError("the checkpoint is damaged: its held-out series does not fit its columns; pass --data")
    if several is None:
        series = PreparedSeries(values, observed, calendar, norm["mean"], norm["std"], layout, scale)
        starts = window_starts(lo, hi, layout.input_len, layout.horizon, layout.history)
    else:
        ids = list(several["ids"])
        series_norm, series_scale = saved_series(payload, ids, norm, scale)
        series = PreparedSeries(values, observed, calendar, np.asarray([m for m, _ in series_norm])[rows],
                                np.asarray([sd for _, sd in series_norm])[rows], layout,
                                np.asarray(series_scale)[rows], rows, ids)
    if len(starts) == 0:
        raise GrutrainError(f"the {split} split holds no window (data.{split}_fraction was too small); "
                            "evaluate another split or pass --data")
    return series, starts, split


def evaluate_checkpoint(payload: dict, model, cfg, split: str, data_path, device) -> dict:
    """The model's metrics next to every baseline's on its own held-out split, or on every window of another CSV."""
    series, starts, name = series_for_checkpoint(payload, cfg, split, data_path)
    metrics = series.score(model, starts, device, by_step=True)
    return {"split": name, "windows": len(starts), **metrics, **series.baselines(starts, metrics["mae"])}


@torch.no_grad()
def predict(payload: dict, model, cfg, input_path: Path, device) -> list[dict]:
    """The `horizon` values after the end of the input CSV (of each series in it), on the original
    scale, one row per step ahead.

    Each row: the series id (long format), step (1..horizon), the time of that step when the CSV
    has the time column and its spacing can be inferred (last time + step * the median spacing), one
    value per target (the median with quantiles) and, with quantiles, `<target>_q<quantile>` columns.
    """
    norm = _check_normalisation(payload, cfg)
    layout, cycles, scale = _saved_layout(payload, cfg)
    if layout.n_known:
        raise GrutrainError("predict does not yet take the future values of data.known_columns; "
                            "evaluate this model with `grutrain eval --data` instead")
    panel = load_panel(cfg.data, path=input_path, role="--input", split=False)
    series_norm, series_scale = saved_series(payload, panel.ids, norm, scale)
    rows = []
    for name, table, (mean, std), mase_scale in zip(panel.ids, panel.tables, series_norm, series_scale):
        for row in _predict_series(model, cfg, table, mean, std, mase_scale, layout, cycles, input_path, device):
            rows.append({cfg.data.id_column: name, **row} if cfg.data.id_column else row)
    return rows


def _predict_series(model, cfg, table, mean, std, scale, layout, cycles, input_path, device) -> list[dict]:
    need = layout.history
    if len(table) < need:
        after = " after dropping rows with blanks" if cfg.data.missing == "drop" else ""
        which = f" (series {table.ids[0]!r})" if table.ids else ""
        raise GrutrainError(f"--input {input_path}{which} has {_rows(len(table))}{after}; the model reads the last "
                            f"{need} (data.input_len, and one anchor season before them), so give at least {need}")
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
    series = PreparedSeries(padded, np.ones(padded.shape, bool), calendar, mean, std, layout, scale)
    forecast = series.forecast(model, np.array([len(table)]), device)[0]  # [H, T, Q]
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
