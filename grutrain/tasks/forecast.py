"""Forecasting: from the last `input_len` steps of one or more series, the next `horizon` steps.

The model reads windows of the normalised columns (targets, then extra inputs) and its head
outputs all `horizon` x targets values at once from the GRU's last state (direct multi-step
forecasting). Each window is seen relative to its last observed value: the target inputs are
fed as their difference from it and the head predicts the change from it (in normalised units).
A head that outputs zero gives the naive forecast, so training starts near the baseline the model
must beat; and a series that trends out of the training range (CO2) never leaves the range of
inputs the model was trained on.

Metrics on the original scale (MAE, RMSE, sMAPE; see data/timeseries.forecast_errors) always come
with the naive (last value repeated) and, given data.season, seasonal-naive forecasts on the same
windows. Target cells that were blank in the file (filled by interpolation) are not scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.nn import functional as F

from grutrain.data.batching import ShuffledBatches
from grutrain.data.timeseries import (forecast_errors, fit_normalisation, gather_windows, load_series,
                                      naive_forecast, seasonal_naive_forecast, window_starts)
from grutrain import plots
from grutrain.errors import GrutrainError
from grutrain.model import SequenceModel
from grutrain.runtime import evaluating
from grutrain.tasks.base import Split

EVAL_BATCH = 512  # windows per forward pass at evaluation


@dataclass(frozen=True)
class WindowSpec:
    input_len: int
    horizon: int
    n_targets: int
    season: int | None

    @classmethod
    def of(cls, cfg) -> "WindowSpec":
        return cls(cfg.data.input_len, cfg.data.horizon, len(cfg.data.target_columns), cfg.data.season)

    @property
    def history(self) -> int:
        """Rows an evaluated window needs before its first target (inputs, and one season for the baseline)."""
        return max(self.input_len, self.season or 0)


def forecast_normalised(model, x: torch.Tensor, spec: WindowSpec) -> torch.Tensor:
    """x [B, input_len, F] normalised -> forecast [B, horizon, n_targets] normalised (float32)."""
    last = x[:, -1:, : spec.n_targets]  # [B, 1, T]
    relative = torch.cat([x[:, :, : spec.n_targets] - last, x[:, :, spec.n_targets:]], dim=-1)
    out, _ = model(relative)  # [B, horizon * n_targets]
    change = out.float().view(x.shape[0], spec.horizon, spec.n_targets)
    return last.float() + change


def normalise(values: np.ndarray, mean, std) -> torch.Tensor:
    return torch.from_numpy((values - np.asarray(mean)) / np.asarray(std)).float()  # [N, F]


def evaluate_windows(model, values: np.ndarray, observed: np.ndarray, starts: np.ndarray, mean, std,
                     spec: WindowSpec, device, amp_dtype=None) -> dict[str, float]:
    """Loss (MSE, normalised scale) and MAE/RMSE/sMAPE (original scale) over the windows at `starts`."""
    norm = normalise(values, mean, std)
    before = torch.arange(-spec.input_len, 0)
    preds = []
    with evaluating(model):
        for chunk in torch.from_numpy(starts).split(EVAL_BATCH):
            x = gather_windows(norm, chunk, before).to(device)  # [B, input_len, F]
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                preds.append(forecast_normalised(model, x, spec).cpu())
    T, ahead = spec.n_targets, np.arange(spec.horizon)
    pred = torch.cat(preds).double().numpy()  # [W, horizon, T]
    actual = gather_windows(values, starts, ahead)[:, :, :T]
    mask = gather_windows(observed, starts, ahead)[:, :, :T]
    if not mask.any():
        raise GrutrainError("every target value of the evaluated windows was blank in the file; nothing to score")
    actual_norm = (actual - np.asarray(mean[:T])) / np.asarray(std[:T])
    loss = float(((pred - actual_norm)[mask] ** 2).mean())
    original = pred * np.asarray(std[:T]) + np.asarray(mean[:T])
    return {"loss": loss, **forecast_errors(original, actual, mask)}


def baseline_metrics(values: np.ndarray, observed: np.ndarray, starts: np.ndarray, spec: WindowSpec) -> dict:
    """{"naive_mae": ..., "seasonal_naive_mae": ..., ...} on the same windows and cells as the model."""
    T, ahead = spec.n_targets, np.arange(spec.horizon)
    actual = gather_windows(values, starts, ahead)[:, :, :T]
    mask = gather_windows(observed, starts, ahead)[:, :, :T]
    out = {f"naive_{k}": v for k, v in forecast_errors(naive_forecast(values, starts, spec.horizon, T),
                                                        actual, mask).items()}
    if spec.season:
        seasonal = seasonal_naive_forecast(values, starts, spec.horizon, T, spec.season)
        out.update({f"seasonal_naive_{k}": v for k, v in forecast_errors(seasonal, actual, mask).items()})
    return out


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def _describe_window(spec: WindowSpec) -> str:
    return f"data.input_len={spec.input_len} + data.horizon={spec.horizon}"


class HeldOut(NamedTuple):
    """Rows of a series with the window starts to score in them, and a name for messages."""
    values: np.ndarray  # [N, F] original scale
    observed: np.ndarray  # [N, F] False where the file had a blank
    starts: np.ndarray  # [W] first target row of each evaluated window
    name: str


def forecast_data(model, held: HeldOut, mean, std, spec: WindowSpec, device) -> dict:
    """The one-step-ahead forecasts of the held-out windows (original scale) with the actual values and
    the baselines: plots.forecast_figure's arguments."""
    values, starts, T = held.values, held.starts, spec.n_targets
    x = gather_windows(normalise(values, mean, std), torch.from_numpy(starts),
                       torch.arange(-spec.input_len, 0)).to(device)  # [W, input_len, F]
    with evaluating(model):
        predicted = forecast_normalised(model, x, spec).cpu().double().numpy()[:, 0, :]  # one step ahead: [W, T]
    seasonal = seasonal_naive_forecast(values, starts, spec.horizon, T, spec.season)[:, 0, :] if spec.season else None
    return {"actual": values[starts, :T], "forecast": predicted * np.asarray(std[:T]) + np.asarray(mean[:T]),
            "naive": naive_forecast(values, starts, spec.horizon, T)[:, 0, :], "seasonal_naive": seasonal,
            "x": starts - starts[0]}


class ForecastTask:
    name = "forecast"
    sampler = None
    carries_state = False
    items_per_batch = 0

    def __init__(self, cfg, columns: list[str], mean: list[float], std: list[float], series: dict | None):
        self.cfg = cfg
        self.spec = WindowSpec.of(cfg)
        self.columns, self.mean, self.std = columns, mean, std
        # The held-out rows: {"values", "observed", "val": [lo, hi), "test": [lo, hi)}; None when unknown.
        self.series = series

    @classmethod
    def from_config(cls, cfg, *, rows_per_step: int, saved: dict | None = None, rank: int = 0,
                    world_size: int = 1) -> "ForecastTask":
        d, spec = cfg.data, WindowSpec.of(cfg)
        table, (train_b, val_b, test_b) = load_series(d)
        needed = spec.input_len + spec.horizon
        if len(table) < needed:
            after = " after dropping rows with blanks" if d.missing == "drop" else ""
            raise GrutrainError(f"{d.path} has {_rows(len(table))}{after}; one window needs {needed} "
                                f"({_describe_window(spec)}); lower them or give a longer series")
        n_train = train_b.stop
        if n_train < needed:
            raise GrutrainError(f"the training block has {n_train} of {len(table)} rows, fewer than the {needed} one "
                                f"window needs ({_describe_window(spec)}); lower data.val_fraction/data.test_fraction, "
                                "data.input_len or data.horizon")
        if saved is not None:  # a resumed run keeps the normalisation it was trained with
            norm = _check_normalisation(saved["task_state"], cfg)
            mean, std = norm["mean"], norm["std"]
        else:
            mean, std = fit_normalisation(table.values[train_b])
        series = {"values": table.values, "observed": table.observed,
                  "val": [val_b.start, val_b.stop], "test": [test_b.start, test_b.stop]}
        task = cls(cfg, list(table.columns), mean, std, series)
        if len(task.eval_starts("val")) == 0:
            raise GrutrainError(f"the validation block has {val_b.stop - val_b.start} rows, too few for one window "
                                f"(data.horizon={spec.horizon} targets, {spec.history} rows of history before them); "
                                "raise data.val_fraction or lower data.horizon")
        task._prepare_training(n_train, rows_per_step, rank, world_size)
        return task

    def _prepare_training(self, n_train: int, rows_per_step: int, rank: int, world_size: int) -> None:
        spec = self.spec
        self.norm = normalise(self.series["values"], self.mean, self.std)  # [N, F]
        self.train_starts = torch.from_numpy(window_starts(0, n_train, spec.input_len, spec.horizon))
        self._before, self._ahead = torch.arange(-spec.input_len, 0), torch.arange(spec.horizon)
        self.sampler = ShuffledBatches(len(self.train_starts), rows_per_step, self.cfg.train.seed + 1,
                                       self._make_batch, rank=rank, world_size=world_size, what="windows")
        self.items_per_batch = self.sampler.global_batch * spec.input_len  # time steps read

    @classmethod
    def from_checkpoint(cls, cfg, task_state: dict) -> "ForecastTask":
        norm = _check_normalisation(task_state, cfg)
        return cls(cfg, norm["columns"], norm["mean"], norm["std"], task_state.get("eval_series"))

    def _make_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        starts = self.train_starts[indices]
        x = gather_windows(self.norm, starts, self._before)  # [B, input_len, F]
        y = gather_windows(self.norm, starts, self._ahead)[:, :, : self.spec.n_targets]  # [B, horizon, T]
        return x, y

    def build_model(self) -> SequenceModel:
        spec = self.spec
        return SequenceModel(self.cfg.model, output_size=spec.horizon * spec.n_targets, input_size=len(self.columns),
                             per_step=False)

    def loss(self, model, batch, hidden):
        x, y = batch
        return F.mse_loss(forecast_normalised(model, x, self.spec), y.float()), None

    def eval_starts(self, split: str) -> np.ndarray:
        lo, hi = self.series[split]
        return window_starts(lo, hi, self.spec.input_len, self.spec.horizon, self.spec.history)

    def has_split(self, split: str) -> bool:
        return len(self.eval_starts(split)) > 0

    def held_out(self, split: Split) -> HeldOut:
        """The rows and windows of a held-out split, or every window of another CSV."""
        spec = self.spec
        if isinstance(split, Path):
            table, _ = load_series(self.cfg.data, path=split, role="--data", split=False)
            starts = window_starts(0, len(table), spec.input_len, spec.horizon, spec.history)
            if len(starts) == 0:
                season = f", data.season={spec.season}" if spec.season else ""
                raise GrutrainError(f"{split} has {_rows(len(table))}; evaluating one window needs "
                                    f"{spec.history + spec.horizon} ({_describe_window(spec)}{season})")
            return HeldOut(table.values, table.observed, starts, str(split))
        series = self.series
        try:
            values, observed = _array(series["values"]).astype(float), _array(series["observed"]).astype(bool)
            lo, hi = (int(v) for v in series[split])
        except (TypeError, KeyError, AttributeError, ValueError):
            raise GrutrainError("the checkpoint is damaged: it holds no held-out series; pass --data") from None
        if values.ndim != 2 or values.shape != observed.shape or values.shape[1] != len(self.columns) \
                or not 0 <= lo <= hi <= len(values):
            raise GrutrainError("the checkpoint is damaged: its held-out series does not fit its columns; pass --data")
        starts = window_starts(lo, hi, spec.input_len, spec.horizon, spec.history)
        if len(starts) == 0:
            raise GrutrainError(f"the {split} split holds no window (data.{split}_fraction was too small); "
                                "evaluate another split or pass --data")
        return HeldOut(values, observed, starts, split)

    def evaluate(self, model, split: Split, device, amp_dtype=None, *,
                 whole: bool = True) -> dict[str, float]:  # whole: always (no cap here)
        held = self.held_out(split)
        return evaluate_windows(model, held.values, held.observed, held.starts, self.mean, self.std, self.spec,
                                device, amp_dtype)

    def report(self, model, split: Split, device) -> dict:
        """The model's metrics next to the baselines' on the same windows."""
        held = self.held_out(split)
        return {"split": held.name, "windows": len(held.starts), **self.evaluate(model, split, device),
                **baseline_metrics(held.values, held.observed, held.starts, self.spec)}

    def baselines(self) -> dict[str, float]:
        out = {}
        for split in ("val", "test"):
            if self.has_split(split):
                held = self.held_out(split)
                metrics = baseline_metrics(held.values, held.observed, held.starts, self.spec)
                out.update({f"{split}/{k}": v for k, v in metrics.items()})
        return out

    def state(self) -> dict:
        # The held-out rows (and the history their first windows read) travel with the model,
        # so `grutrain eval` needs only the checkpoint.
        series = self.series
        first = max(0, series["val"][0] - self.spec.history)
        return {
            "normalisation": {"columns": list(self.columns), "n_targets": self.spec.n_targets,
                              "mean": list(self.mean), "std": list(self.std)},
            "eval_series": {"values": torch.from_numpy(np.asarray(series["values"])[first:].copy()),
                            "observed": torch.from_numpy(np.asarray(series["observed"])[first:].copy()),
                            **{split: [series[split][0] - first, series[split][1] - first] for split in ("val", "test")}},
        }

    def on_evaluation(self, model, device, step: int, logger) -> None:
        if plots.have_matplotlib():  # the plot extra; without it TensorBoard just has no figure
            data = forecast_data(model, self.held_out("val"), self.mean, self.std, self.spec, device)
            logger.figure(step, "val/forecast", plots.forecast_figure(**data, names=self.cfg.data.target_columns))

    def final_extras(self, model, device) -> dict:
        return {}

    def figure(self, model, split: Split, device):
        held = self.held_out(split)
        data = forecast_data(model, held, self.mean, self.std, self.spec, device)
        name = Path(held.name).name if isinstance(split, Path) else held.name
        ahead = f" (the first of each forecast's {self.spec.horizon} steps)" if self.spec.horizon > 1 else ""
        return plots.forecast_figure(**data, names=self.cfg.data.target_columns,
                                     title=f"{name}: one-step-ahead forecasts{ahead}")

    def usage(self) -> dict:
        data, n_targets = self.cfg.data, self.spec.n_targets
        return {"normalisation": {"columns": list(self.columns), "n_targets": n_targets, "mean": list(self.mean),
                                  "std": list(self.std)},
                "input_len": data.input_len, "horizon": data.horizon, "target_columns": list(data.target_columns),
                "input_columns": list(data.input_columns),
                "preprocessing": "z = (value - mean) / std for the last input_len rows of the columns in "
                                 "normalisation.columns order (targets, then extra inputs); target column j is fed "
                                 "relative to the window's last value, z[:, :, j] - z[:, -1, j]; extra inputs as z",
                "postprocessing": f"forecast[b, k, j] = z_last[b, j] + output[b].reshape(horizon, {n_targets})"
                                  "[k, j], then * std[j] + mean[j], with z_last = z[b, -1, j] taken before the "
                                  "subtraction: the value of target j, k+1 steps after the input"}

    def predict(self, model, input_path: Path, device) -> list[dict]:
        """The `horizon` values after the end of the input CSV, on the original scale, one row per step ahead.

        Each row: step (1..horizon), the time of that step when the CSV has the time column and its
        spacing can be inferred (last time + step * the median spacing), and one value per target.
        """
        spec, cfg = self.spec, self.cfg
        table, _ = load_series(cfg.data, path=input_path, role="--input", split=False)
        if len(table) < spec.input_len:
            after = " after dropping rows with blanks" if cfg.data.missing == "drop" else ""
            raise GrutrainError(f"--input {input_path} has {_rows(len(table))}{after}; the model reads the last "
                                f"{spec.input_len} (data.input_len), so give at least {spec.input_len}")
        x = normalise(table.values[-spec.input_len:], self.mean, self.std)[None].to(device)  # [1, L, F]
        with evaluating(model):
            forecast = forecast_normalised(model, x, spec)[0].cpu().double().numpy()  # [horizon, T]
        T = spec.n_targets
        forecast = forecast * np.asarray(self.std[:T]) + np.asarray(self.mean[:T])
        times = table.time_axis.next_values(table.times, spec.horizon) if table.time_column else None
        rows = []
        for k in range(spec.horizon):
            row = {"step": k + 1}
            if times is not None:
                row[table.time_column] = times[k]
            row.update({name: float(f"{forecast[k, j]:.7g}") for j, name in enumerate(cfg.data.target_columns)})
            rows.append(row)
        return rows


def _array(values) -> np.ndarray:
    """A checkpoint's tensor (on any device) or a table's array as a numpy array."""
    return values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


def _check_normalisation(task_state: dict, cfg) -> dict:
    norm = task_state.get("normalisation")
    columns = list(cfg.data.target_columns) + list(cfg.data.input_columns)
    ok = (isinstance(norm, dict) and norm.get("columns") == columns
          and all(isinstance(norm.get(k), list) and len(norm[k]) == len(columns)
                  and all(isinstance(v, float) for v in norm[k]) for k in ("mean", "std")))
    if not ok:
        raise GrutrainError("the checkpoint is damaged: it has no normalisation (mean and std) for the columns "
                            f"{', '.join(columns)}")
    return norm
