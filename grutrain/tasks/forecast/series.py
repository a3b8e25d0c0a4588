"""One series prepared for the forecaster: normalised features, calendar inputs, the window
layout, and the forecasts and scores of any windows of it (model and baselines).

Metrics on the original scale for each evaluated split: MAE, RMSE, sMAPE, MASE (scaled by the
training rows' in-sample seasonal-naive MAE with the first season, or lag 1 without one), the MAE
of each step ahead, and with quantiles the mean pinball loss and the coverage of each central
interval. The same point metrics come for the naive forecast and each seasonal naive; the one with
the lowest MAE on the windows scored is named `baseline`, and `mae_vs_baseline` is the model's MAE
over it (below 1: the model beats every baseline).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from grutrain.tasks.forecast import calendar as cal
from grutrain.tasks.forecast.conformal import apply_offsets, cqr_scores
from grutrain.tasks.forecast.classical import classical_windows, combine
from grutrain.tasks.forecast.mstl import mstl_forecast
from grutrain.tasks.forecast.theta import theta_forecast
from grutrain.tasks.forecast.windows import WindowLayout, add_anchor, make_inputs, seasonal_naive_baselines
from grutrain.data.timeseries import forecast_errors, gather_windows
from grutrain.errors import GrutrainError
from grutrain.tasks.forecast.metrics import (interval_coverage, mae_by_step, mase, percentage_errors, pinball_loss,
                                             series_average)
from grutrain.runtime import evaluating

EVAL_BATCH = 512  # windows per forward pass at evaluation


def transformed(values: np.ndarray, transform: str, n_targets: int) -> np.ndarray:
    """The rows as the model sees them before normalisation: data.transform=log takes log(1 + y) of the
    targets (values below 0 are clipped to 0: the transform is for non-negative series)."""
    if transform != "log":
        return values
    out = np.array(values, dtype=np.float64)
    out[:, :n_targets] = np.log1p(np.maximum(out[:, :n_targets], 0.0))
    return out


def untransformed(forecast: np.ndarray, transform: str) -> np.ndarray:
    return np.expm1(forecast) if transform == "log" else forecast


def normalise(values: np.ndarray, mean, std) -> torch.Tensor:
    return torch.from_numpy((values - np.asarray(mean)) / np.asarray(std)).float()  # [N, F]


@dataclass
class PreparedSeries:
    """One series, or several laid end to end (panel.py) with each row's own series' numbers."""

    values: np.ndarray  # [N, F] original scale (targets, past-only inputs, known inputs)
    observed: np.ndarray  # [N, F] bool: False where the file had a blank
    calendar: np.ndarray  # [N, C] float32
    mean: list  # [F], or [N, F]: each row's series' normalisation
    std: list
    layout: WindowLayout
    mase_scale: list  # [T], or [N, T]
    row_series: np.ndarray | None = None  # [N] each row's series (several series)
    ids: list | None = None  # the series' names

    def __post_init__(self):
        shape = self.values.shape
        self.row_mean = np.broadcast_to(np.asarray(self.mean, dtype=np.float64), shape)
        self.row_std = np.broadcast_to(np.asarray(self.std, dtype=np.float64), shape)
        self.row_scale = np.broadcast_to(np.asarray(self.mase_scale, dtype=np.float64), (shape[0], self.layout.n_targets))
        self.norm = normalise(transformed(self.values, self.layout.transform, self.layout.n_targets),
                              self.row_mean, self.row_std)
        self.calendar_t = torch.from_numpy(np.asarray(self.calendar, dtype=np.float32).reshape(len(self.values), -1))
        self._classical_cache: dict = {}  # (method, origin) -> [horizon, T]: a fit scores the same windows often

    def inputs(self, starts: torch.Tensor):
        return make_inputs(self.norm, self.calendar_t, starts, self.layout)

    def targets(self, starts: torch.Tensor) -> torch.Tensor:
        return gather_windows(self.norm, starts, torch.arange(self.layout.horizon))[:, :, : self.layout.n_targets]

    def forecast(self, model, starts: np.ndarray, device, amp_dtype=None, conformal=None) -> np.ndarray:
        """[W, horizon, T, Q] on the original scale (Q = 1 without quantiles); `conformal`: the CQR offsets
        ([intervals, horizon, T], conformal.py) that calibrate the intervals."""
        out = []
        with evaluating(model):
            for chunk in torch.from_numpy(np.asarray(starts)).split(EVAL_BATCH):
                x, anchor = self.inputs(chunk)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    output, _ = model(x.to(device))
                out.append(add_anchor(output.cpu(), anchor, self.layout))
        T, starts = self.layout.n_targets, np.asarray(starts)
        z = torch.cat(out).double().numpy()
        z = z * self.row_std[starts, None, :T, None] + self.row_mean[starts, None, :T, None]
        forecast = untransformed(z, self.layout.transform)
        if self.layout.classical_weight > 0:
            forecast = self.combined(forecast, starts)
        if conformal is not None:
            forecast = apply_offsets(forecast, conformal, self.row_scale[starts][:, None, :], self.layout.quantiles,
                                     self.layout.median_index)
        return forecast

    def theta(self, starts: np.ndarray) -> np.ndarray:
        """[W, horizon, T] the Theta method's forecasts from the windows' origins (theta.py), on the longest
        season: a week holds the day's shape too (taylor)."""
        season = max(self.layout.seasons, default=1)
        return self._classical("theta", lambda y, h: theta_forecast(y, h, season), starts)

    def mstl(self, starts: np.ndarray) -> np.ndarray:
        """[W, horizon, T] MSTL's forecasts from the windows' origins, with every season (mstl.py)."""
        seasons = list(self.layout.seasons)
        return self._classical("mstl", lambda y, h: mstl_forecast(y, h, seasons), starts)

    def _classical(self, name: str, method, starts: np.ndarray) -> np.ndarray:
        starts = np.asarray(starts)
        missing = np.array([s for s in dict.fromkeys(starts.tolist()) if (name, s) not in self._classical_cache],
                           dtype=np.int64)
        if len(missing):
            fresh = classical_windows(method, self.values, self.observed, missing, self.row_series,
                                      self.layout.horizon, self.layout.n_targets)
            self._classical_cache.update({(name, int(s)): f for s, f in zip(missing, fresh)})
        return np.stack([self._classical_cache[(name, int(s))] for s in starts]) if len(starts) else \
            np.zeros((0, self.layout.horizon, self.layout.n_targets))

    def known_classical(self, starts: np.ndarray) -> dict[str, np.ndarray]:
        """{method: [W, horizon, T]} the classical forecasts already computed for every one of these windows
        (a checkpoint keeps them: they depend on the rows only, and eval and predict need them again)."""
        starts = [int(v) for v in np.asarray(starts)]
        names = {name for name, _ in self._classical_cache}
        return {name: np.stack([self._classical_cache[(name, v)] for v in starts]) for name in sorted(names)
                if starts and all((name, v) in self._classical_cache for v in starts)}

    def remember_classical(self, name: str, starts: np.ndarray, forecasts: np.ndarray) -> None:
        shape = (len(starts), self.layout.horizon, self.layout.n_targets)
        if forecasts.shape == shape and np.isfinite(forecasts).all():  # anything else is recomputed
            self._classical_cache.update({(name, int(v)): f for v, f in zip(np.asarray(starts), forecasts)})

    def combined(self, forecast: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """The network's forecast combined with the classical ones that have a weight in the layout."""
        layout = self.layout
        parts = [(layout.theta_weight, self.theta), (layout.mstl_weight, self.mstl)]
        return combine(forecast, [(w, method(starts)) for w, method in parts if w > 0], layout.median_index)

    def cqr_scores(self, model, starts: np.ndarray, device) -> np.ndarray:
        """[intervals, W, H, T] CQR scores of the model's intervals on the windows at `starts`."""
        actual, mask = self._actual(starts)
        forecast = self.forecast(model, starts, device)
        return cqr_scores(forecast, actual, mask, self.row_scale[np.asarray(starts)][:, None, :], self.layout.quantiles)

    def _actual(self, starts):
        T, ahead = self.layout.n_targets, np.arange(self.layout.horizon)
        actual = gather_windows(self.values, starts, ahead)[:, :, :T]
        mask = gather_windows(self.observed, starts, ahead)[:, :, :T]
        if not mask.any():
            raise GrutrainError("every target value of the evaluated windows was blank in the file; nothing to score")
        return actual, mask

    def point_metrics(self, point: np.ndarray, actual, mask, starts) -> dict:
        """MAE, RMSE (over cells), sMAPE, MAPE and MASE; with several series the last three are averaged per
        series, then over series, as the competition tables are."""
        starts = np.asarray(starts)
        scale = self.row_scale[starts][:, None, :]  # [W, 1, T]
        out = {**forecast_errors(point, actual, mask), "mase": mase(point, actual, mask, scale)}
        smape_terms, mape_terms = percentage_errors(point, actual)
        if self.row_series is None:
            keep = mask & np.isfinite(mape_terms)
            out["mape"] = float(mape_terms[keep].mean()) if keep.any() else float("nan")
            return out
        groups = self.row_series[starts]
        scaled = np.abs(point - actual) / np.where(scale > 0, scale, np.nan)
        out.update(smape=series_average(smape_terms, mask, groups), mape=series_average(mape_terms, mask, groups),
                   mase=series_average(scaled, mask, groups))
        return out

    def score(self, model, starts: np.ndarray, device, amp_dtype=None, by_step: bool = False, conformal=None) -> dict:
        """The model's loss (normalised scale) and metrics (original scale) over the windows at `starts`;
        with `conformal` offsets the intervals are calibrated, and the raw heads' coverage is reported too."""
        layout, T = self.layout, self.layout.n_targets
        actual, mask = self._actual(starts)
        raw = self.forecast(model, starts, device, amp_dtype)  # [W, H, T, Q]
        forecast = raw
        if conformal is not None:
            forecast = apply_offsets(raw, conformal, self.row_scale[np.asarray(starts)][:, None, :], layout.quantiles,
                                     layout.median_index)
        starts = np.asarray(starts)
        std, mean = self.row_std[starts, None, :T], self.row_mean[starts, None, :T]  # [W, 1, T]
        model_scale = lambda v: transformed(v.reshape(-1, 1), layout.transform, 1).reshape(v.shape)  # noqa: E731
        actual_norm = (model_scale(actual) - mean) / std
        if layout.quantiles:
            loss = pinball_loss(((model_scale(forecast) - mean[..., None]) / std[..., None])[mask], actual_norm[mask],
                                layout.quantiles)
            point = forecast[..., layout.median_index]
        else:
            point = forecast[..., 0]
            error = ((model_scale(point) - mean) / std - actual_norm)[mask]
            loss = float(np.abs(error).mean() if layout.loss == "mae" else (error ** 2).mean())
        out = {"loss": loss, **self.point_metrics(point, actual, mask, starts)}
        if layout.quantiles:
            out["pinball"] = pinball_loss(forecast[mask], actual[mask], layout.quantiles)
            qs = layout.quantiles
            for i in range(len(qs) // 2):  # central intervals: the i-th lowest with the i-th highest quantile
                lo, hi = qs[i], qs[-1 - i]
                nominal = round(100 * (hi - lo))
                out[f"coverage_{nominal}"] = interval_coverage(forecast[..., i], forecast[..., -1 - i], actual, mask)
                if conformal is not None:
                    out[f"coverage_{nominal}_raw"] = interval_coverage(raw[..., i], raw[..., -1 - i], actual, mask)
        if by_step:
            out["mae_by_step"] = mae_by_step(point, actual, mask)
        if by_step and self.ids is not None and len(self.ids) > 1:
            out["per_series"] = self._per_series(point, actual, mask, starts)
        return out

    def _per_series(self, point, actual, mask, starts) -> dict:
        """{id: {mae, mase, baseline, baseline_mae}} for each series with scored windows."""
        which = self.row_series[starts]
        out = {}
        for index, name in enumerate(self.ids):
            rows = which == index
            if not rows.any() or not mask[rows].any():
                continue
            mine = self.point_metrics(point[rows], actual[rows], mask[rows], starts[rows])
            best = self.baselines(starts[rows], mine["mae"])
            out[name] = {"windows": int(rows.sum()), "mae": mine["mae"], "mase": mine["mase"],
                         "baseline": best["baseline"], "baseline_mae": best["baseline_mae"],
                         **({"mae_vs_baseline": best["mae_vs_baseline"]} if "mae_vs_baseline" in best else {})}
        return out

    def baselines(self, starts: np.ndarray, model_mae: float | None = None) -> dict:
        """naive_* and seasonal_naive_<s>_* metrics, the name of the best `baseline` and its metrics as
        baseline_*, and (given the model's MAE) mae_vs_baseline."""
        layout = self.layout
        actual, mask = self._actual(starts)
        forecasts = seasonal_naive_baselines(self.values, np.asarray(starts), layout.horizon, layout.n_targets,
                                             list(layout.seasons))
        out, best = {}, None
        for name, f in forecasts.items():
            metrics = self.point_metrics(f, actual, mask, starts)
            out.update({f"{name}_{k}": v for k, v in metrics.items()})
            if best is None or metrics["mae"] < best[1]["mae"]:
                best = (name, metrics)
        out["baseline"] = best[0]
        out.update({f"baseline_{k}": v for k, v in best[1].items()})
        if model_mae is not None:
            if best[1]["mae"] > 0:  # a perfect baseline (a constant series) leaves no ratio to give
                out["mae_vs_baseline"] = model_mae / best[1]["mae"]
        return out


def calendar_of(table, cfg, cycles: list[str] | None) -> tuple[list[str], np.ndarray]:
    """(cycles, [N, 2 * cycles] features) of a table; `cycles` None: choose them from the spacing."""
    mode = cfg.data.calendar
    use = table.time_column is not None and mode != "none" and (table.time_axis.kind == "date" or mode == "epoch_seconds")
    if cycles == [] or (cycles is None and not use):
        return [], np.zeros((len(table), 0), dtype=np.float32)
    if not use:
        raise GrutrainError(f"{table.source}: the model reads calendar inputs, so the data needs its time column "
                            f"{cfg.data.time_column!r} with dates")
    when = cal.as_datetimes(table.times, table.time_axis.kind, mode == "epoch_seconds", table.source)
    cycles = cal.choose_cycles(when) if cycles is None else cycles
    return cycles, cal.calendar_features(when, cycles)


def calendar_of_panel(panel, cfg, cycles: list[str] | None) -> tuple[list[str], np.ndarray]:
    """calendar_of for each series, the cycles chosen from the first (longest-spanning) series."""
    if cycles is None:
        longest = max(panel.tables, key=len)
        cycles, _ = calendar_of(longest, cfg, None)
    parts = [calendar_of(t, cfg, cycles)[1] for t in panel.tables]
    return cycles, np.concatenate(parts)


def saved_series(saved: dict | None, ids: list[str], norm: dict, scale: list) -> tuple[list, list]:
    """([(mean, std)] and [MASE scale] per series of `ids`) from the task state's forecast_series
    (None: trained on one series, whose normalisation is `norm`)."""
    if saved is None:
        if len(ids) > 1:
            raise GrutrainError("the checkpoint was trained on one series; this CSV holds several (data.id_column)")
        return [(norm["mean"], norm["std"])], [scale]
    try:
        index = {name: i for i, name in enumerate(saved["ids"])}
        unknown = [name for name in ids if name not in index]
        if unknown:
            raise GrutrainError(f"series {unknown[0]!r} was not in the training data; the model knows the series "
                                f"{', '.join(map(repr, saved['ids'][:5]))}{', ...' if len(saved['ids']) > 5 else ''}")
        return ([(list(saved["mean"][index[n]]), list(saved["std"][index[n]])) for n in ids],
                [list(saved["mase_scale"][index[n]]) for n in ids])
    except (KeyError, TypeError, IndexError):
        raise GrutrainError("the checkpoint is damaged: its per-series normalisation is unreadable") from None


def forecast_data(model, series: PreparedSeries, starts: np.ndarray, device) -> dict:
    """The one-step-ahead forecasts of the windows at `starts` with the actual values, the naive and
    the best seasonal-naive forecasts and, with quantiles, the outermost interval: the arguments of
    plots.forecast_figure."""
    layout, T = series.layout, series.layout.n_targets
    forecast = series.forecast(model, starts, device)[:, 0]  # one step ahead: [W, T, Q]
    baselines = seasonal_naive_baselines(series.values, starts, layout.horizon, T, list(layout.seasons))
    actual = series.values[starts, :T]
    seasonal = [v[:, 0] for k, v in baselines.items() if k != "naive"]
    best = min(seasonal, key=lambda f: float(np.abs(f - actual).mean())) if seasonal else None
    out = {"actual": actual, "forecast": forecast[..., layout.median_index or 0], "naive": baselines["naive"][:, 0],
           "seasonal_naive": best, "x": starts - starts[0]}
    if layout.quantiles:
        out["lower"], out["upper"] = forecast[..., 0], forecast[..., -1]
    return out
