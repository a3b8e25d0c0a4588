"""Forecasting: from the last `input_len` steps of one or more series, the next `horizon` steps.

The model reads windows of the normalised columns (targets, then extra inputs) and its head
outputs all `horizon` x targets values at once from the GRU's last state (direct multi-step
forecasting). Each window is seen relative to its last observed value: the target inputs are
fed as their difference from it and the head predicts the change from it (in normalised units).
A head that outputs zero gives the naive forecast, so training starts near the baseline the model
must beat; and a series that trends out of the training range (CO2) never leaves the range of
inputs the model was trained on (Mauna Loa CO2, 13 weeks ahead: test MAE 0.45 ppm, against
0.85-1.9 ppm when the same model reads absolute values).

Metrics on the original scale (MAE, RMSE, sMAPE; see data/timeseries.forecast_errors) always come
with the naive (last value repeated) and, given data.season, seasonal-naive forecasts on the same
windows. Target cells that were blank in the file (filled by interpolation) are not scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from grutrain.data.batching import ShuffledBatches
from grutrain.data.timeseries import (forecast_errors, fit_normalisation, gather_windows, load_series,
                                      naive_forecast, seasonal_naive_forecast, window_starts)
from grutrain.errors import GrutrainError
from grutrain.model import SequenceModel

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


@torch.no_grad()
def evaluate_windows(model, values: np.ndarray, observed: np.ndarray, starts: np.ndarray, mean, std,
                     spec: WindowSpec, device, amp_dtype=None) -> dict[str, float]:
    """Loss (MSE, normalised scale) and MAE/RMSE/sMAPE (original scale) over the windows at `starts`."""
    was_training = model.training
    model.eval()
    norm = normalise(values, mean, std)
    before = torch.arange(-spec.input_len, 0)
    preds = []
    for chunk in torch.from_numpy(starts).split(EVAL_BATCH):
        x = gather_windows(norm, chunk, before).to(device)  # [B, input_len, F]
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            preds.append(forecast_normalised(model, x, spec).cpu())
    model.train(was_training)
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


class ForecastTask:
    name = "forecast"

    def __init__(self, cfg, saved: dict | None, rank: int, world_size: int):
        self.cfg = cfg
        d = cfg.data
        self.spec = spec = WindowSpec.of(cfg)
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
        self.columns = table.columns
        if saved is not None:  # a resumed run keeps the normalisation it was trained with
            norm = _check_normalisation(saved, cfg)
            self.mean, self.std = norm["mean"], norm["std"]
        else:
            self.mean, self.std = fit_normalisation(table.values[train_b])
        self.values, self.observed, self.blocks = table.values, table.observed, {"val": val_b, "test": test_b}
        self.norm = normalise(self.values, self.mean, self.std)  # [N, F]
        self.train_starts = torch.from_numpy(window_starts(0, n_train, spec.input_len, spec.horizon))
        self.eval_starts = {split: window_starts(b.start, b.stop, spec.input_len, spec.horizon, spec.history)
                            for split, b in self.blocks.items()}
        if len(self.eval_starts["val"]) == 0:
            raise GrutrainError(f"the validation block has {val_b.stop - val_b.start} rows, too few for one window "
                                f"(data.horizon={spec.horizon} targets, {spec.history} rows of history before them); "
                                "raise data.val_fraction or lower data.horizon")
        self._before = torch.arange(-spec.input_len, 0)
        self._ahead = torch.arange(spec.horizon)
        self.sampler = ShuffledBatches(len(self.train_starts), cfg.train.batch_size, cfg.train.seed + 1,
                                       self._make_batch, rank=rank, world_size=world_size, what="windows")
        self.carries_state = False
        self.items_per_batch = self.sampler.global_batch * spec.input_len  # time steps read

    def _make_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        starts = self.train_starts[indices]
        x = gather_windows(self.norm, starts, self._before)  # [B, input_len, F]
        y = gather_windows(self.norm, starts, self._ahead)[:, :, : self.spec.n_targets]  # [B, horizon, T]
        return x, y

    def build_model(self) -> SequenceModel:
        return _model(self.cfg, len(self.columns))

    def loss(self, model, batch, hidden):
        x, y = batch
        return F.mse_loss(forecast_normalised(model, x, self.spec), y.float()), None

    def has_split(self, split: str) -> bool:
        return len(self.eval_starts[split]) > 0

    def evaluate(self, model, split: str, device, amp_dtype=None, whole: bool = True) -> dict[str, float]:
        return evaluate_windows(model, self.values, self.observed, self.eval_starts[split], self.mean, self.std,
                                self.spec, device, amp_dtype)

    def baselines(self) -> dict[str, float]:
        out = {}
        for split in ("val", "test"):
            if self.has_split(split):
                metrics = baseline_metrics(self.values, self.observed, self.eval_starts[split], self.spec)
                out.update({f"{split}/{k}": v for k, v in metrics.items()})
        return out

    def checkpoint_state(self) -> dict:
        # The held-out rows (and the history their first windows read) travel with the model,
        # so `grutrain eval` needs only the checkpoint.
        first = max(0, self.blocks["val"].start - self.spec.history)
        return {
            "normalisation": {"columns": list(self.columns), "n_targets": self.spec.n_targets,
                              "mean": list(self.mean), "std": list(self.std)},
            "eval_series": {"values": torch.from_numpy(self.values[first:].copy()),
                            "observed": torch.from_numpy(self.observed[first:].copy()),
                            **{split: [b.start - first, b.stop - first] for split, b in self.blocks.items()}},
        }

    def on_evaluation(self, model, device, step: int, metrics) -> None:
        from grutrain import plots

        if plots.have_matplotlib():  # the plot extra; without it TensorBoard just has no figure
            data = plots.forecast_data(model, self.values, self.eval_starts["val"], self.mean, self.std, self.spec, device)
            figure = plots.forecast_figure(**data, names=self.cfg.data.target_columns)
            plots.log_figure(metrics, step, "val/forecast", figure)

    def final_extras(self, model, device) -> dict:
        return {}


def _model(cfg, n_features: int) -> SequenceModel:
    spec = WindowSpec.of(cfg)
    return SequenceModel(cfg.model, output_size=spec.horizon * spec.n_targets, input_size=n_features, per_step=False)


def _check_normalisation(payload: dict, cfg) -> dict:
    norm = payload.get("normalisation")
    columns = list(cfg.data.target_columns) + list(cfg.data.input_columns)
    ok = (isinstance(norm, dict) and norm.get("columns") == columns
          and all(isinstance(norm.get(k), list) and len(norm[k]) == len(columns)
                  and all(isinstance(v, float) for v in norm[k]) for k in ("mean", "std")))
    if not ok:
        raise GrutrainError("the checkpoint is damaged: it has no normalisation (mean and std) for the columns "
                            f"{', '.join(columns)}")
    return norm


def build(cfg, saved, rank, world_size) -> ForecastTask:
    return ForecastTask(cfg, saved, rank, world_size)


def model_for_checkpoint(payload: dict, cfg) -> SequenceModel:
    norm = _check_normalisation(payload, cfg)
    return _model(cfg, len(norm["columns"]))


def evaluate_checkpoint(payload: dict, model, cfg, split: str, data_path, device) -> dict:
    """The model's metrics next to the baselines' on its own held-out split, or on every window of another CSV."""
    norm = _check_normalisation(payload, cfg)
    spec = WindowSpec.of(cfg)
    if data_path is not None:
        table, _ = load_series(cfg.data, path=data_path, role="--data", split=False)
        values, observed, name = table.values, table.observed, str(data_path)
        starts = window_starts(0, len(table), spec.input_len, spec.horizon, spec.history)
        if len(starts) == 0:
            season = f", data.season={spec.season}" if spec.season else ""
            raise GrutrainError(f"{data_path} has {_rows(len(table))}; evaluating one window needs "
                                f"{spec.history + spec.horizon} ({_describe_window(spec)}{season})")
    else:
        series = payload.get("eval_series")
        try:
            values, observed = series["values"].double().numpy(), series["observed"].bool().numpy()
            lo, hi = (int(v) for v in series[split])
        except (TypeError, KeyError, AttributeError, ValueError):
            raise GrutrainError("the checkpoint is damaged: it holds no held-out series; pass --data") from None
        if values.ndim != 2 or values.shape != observed.shape or values.shape[1] != len(norm["columns"]) \
                or not 0 <= lo <= hi <= len(values):
            raise GrutrainError("the checkpoint is damaged: its held-out series does not fit its columns; pass --data")
        starts, name = window_starts(lo, hi, spec.input_len, spec.horizon, spec.history), split
        if len(starts) == 0:
            raise GrutrainError(f"the {split} split holds no window (data.{split}_fraction was too small); "
                                "evaluate another split or pass --data")
    metrics = evaluate_windows(model, values, observed, starts, norm["mean"], norm["std"], spec, device)
    return {"split": name, "windows": len(starts), **metrics, **baseline_metrics(values, observed, starts, spec)}


@torch.no_grad()
def predict(payload: dict, model, cfg, input_path: Path, device) -> list[dict]:
    """The `horizon` values after the end of the input CSV, on the original scale, one row per step ahead.

    Each row: step (1..horizon), the time of that step when the CSV has the time column and its
    spacing can be inferred (last time + step * the median spacing), and one value per target.
    """
    norm = _check_normalisation(payload, cfg)
    spec = WindowSpec.of(cfg)
    table, _ = load_series(cfg.data, path=input_path, role="--input", split=False)
    if len(table) < spec.input_len:
        after = " after dropping rows with blanks" if cfg.data.missing == "drop" else ""
        raise GrutrainError(f"--input {input_path} has {_rows(len(table))}{after}; the model reads the last "
                            f"{spec.input_len} (data.input_len), so give at least {spec.input_len}")
    x = normalise(table.values[-spec.input_len:], norm["mean"], norm["std"])[None].to(device)  # [1, L, F]
    model.eval()
    forecast = forecast_normalised(model, x, spec)[0].cpu().double().numpy()  # [horizon, T]
    T = spec.n_targets
    forecast = forecast * np.asarray(norm["std"][:T]) + np.asarray(norm["mean"][:T])
    times = table.time_axis.next_values(table.times, spec.horizon) if table.time_column else None
    rows = []
    for k in range(spec.horizon):
        row = {"step": k + 1}
        if times is not None:
            row[table.time_column] = times[k]
        row.update({name: float(f"{forecast[k, j]:.7g}") for j, name in enumerate(cfg.data.target_columns)})
        rows.append(row)
    return rows
