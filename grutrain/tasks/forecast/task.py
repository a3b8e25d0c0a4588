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
is "the same half-hour last week" (windows.py). Calendar inputs from a date time
column and data.known_columns are fed for the horizon too; data.quantiles trains with the pinball
loss. Metrics (series.py) always come with the naive and every seasonal-naive
forecast on the same windows, the best one named as the baseline. Target cells that were blank in
the file (filled by interpolation) are not scored. Reading a checkpoint's state and predicting
new rows: state.py.
"""

from __future__ import annotations

import math
from dataclasses import replace
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from grutrain import plots
from grutrain.data.batching import ShuffledBatches
from grutrain.tasks.forecast.windows import (WindowLayout, add_anchor, choose_anchor_lag, residual_scale,
                                             rolling_origins)
from grutrain.tasks.forecast import seasons
from grutrain.tasks.forecast.ensemble import MedianEnsemble, per_member
from grutrain.tasks.forecast.panel import Panel, load_panel
from grutrain.progress import note
from grutrain.data.timeseries import fit_normalisation
from grutrain.data.digest import DATA_KEY, check_same_data, data_record, file_digest
from grutrain.errors import GrutrainError
from grutrain.config.schema import validate_as
from grutrain.files.checkpoint import load_checkpoint
from grutrain.tasks.forecast.conformal import interval_pairs, offsets_from_scores
from grutrain.tasks.forecast.config import ForecastConfig
from grutrain.tasks.forecast.metrics import pinball_loss, seasonal_scale
from grutrain.model import SequenceModel
from grutrain.tasks.export_io import SequenceIO
from grutrain.tasks.protocols import Split
from grutrain.tasks.forecast.series import PreparedSeries, calendar_of_panel, forecast_data, saved_series, transformed
from grutrain.tasks.forecast.state import (base_layout, check_normalisation, describe_window, predict_series,
                                           rows_text, saved_layout, stored_series)


class HeldOut(NamedTuple):
    """A prepared series with the window starts to score in it, and a name for messages."""
    series: PreparedSeries
    starts: np.ndarray  # [W] first target row of each evaluated window
    name: str


class ForecastTask:
    name = "forecast"
    sampler = None
    carries_state = False
    items_per_batch = 0

    def __init__(self, cfg, columns: list[str], mean: list[float], std: list[float], layout: WindowLayout,
                 cycles: list[str], mase_scale: list[float], several: dict | None):
        self.cfg = cfg
        self.layout, self.cycles = layout, list(cycles)
        self.columns, self.mean, self.std = list(columns), list(mean), list(std)
        self.mase_scale = list(mase_scale)  # [T] the (first) series' MASE scale
        self.several = several  # {"ids", "mean", "std", "mase_scale"} per series; None: one series
        self._held: dict[str, HeldOut] = {}  # val/test, prepared once
        self._stored: dict | None = None  # a checkpoint's eval_series, read on first use
        self._scores: list | None = None  # data.conformal_from's CQR scores, read on first use

    # ------------------------------------------------------------------ built for training

    @classmethod
    def from_config(cls, cfg, *, rows_per_step: int, saved: dict | None = None, rank: int = 0,
                    world_size: int = 1) -> "ForecastTask":
        if cfg.data.season == "auto":
            cfg = _with_seasons(cfg, saved, rank)
        d = cfg.data
        panel = load_panel(d)
        record = _data_record(d.path, panel)
        if saved is not None:  # the same file and split sizes as the checkpoint's, or allowed to differ
            check_same_data(saved["task_state"], record, cfg.train.allow_data_change)
        _check_lengths(panel, cfg)
        T = len(d.target_columns)
        # Each series is normalised by its own training rows ([S, F]); the held-out rows never reach it.
        if d.transform == "log" and any((t.values[b[0], :T] < 0).any() for t, b in zip(panel.tables, panel.blocks)):
            raise GrutrainError("data.transform=log needs non-negative targets, and the training rows hold negative "
                                "values; set data.transform=none")
        model_rows = [transformed(t.values, d.transform, T) for t in panel.tables]  # the scale the model reads
        series_norm = [fit_normalisation(v[blocks[0]]) for v, blocks in zip(model_rows, panel.blocks)]
        if d.transform == "log":  # log units are relative errors already: no division by each series' spread
            series_norm = [(m, [1.0] * T + sd[T:]) for m, sd in series_norm]
        if saved is not None:  # a resumed run keeps the normalisation and layout it was trained with
            state = saved["task_state"]
            norm = check_normalisation(state, cfg)
            layout, cycles, scale = saved_layout(state, cfg)
            series_norm, scales = saved_series(state.get("forecast_series"), panel.ids, norm, scale)
            cycles, calendar = calendar_of_panel(panel, cfg, cycles)
        else:
            cycles, calendar = calendar_of_panel(panel, cfg, None)
            train_norm = [(v[blocks[0], :T] - np.asarray(m[:T])) / np.asarray(sd[:T])
                          for v, blocks, (m, sd) in zip(model_rows, panel.blocks, series_norm)]
            lag = choose_anchor_lag(train_norm, d.seasons, d.anchor)
            layout = base_layout(cfg, lag, calendar.shape[1], residual_scale(train_norm, lag))
            first_season = d.seasons[0] if d.seasons else 1
            scales = [[float(x) for x in seasonal_scale(t.values[blocks[0], :T], first_season)]
                      for t, blocks in zip(panel.tables, panel.blocks)]
        several = None
        if len(panel.ids) > 1:
            several = {"ids": list(panel.ids), "mean": [list(m) for m, _ in series_norm],
                       "std": [list(sd) for _, sd in series_norm], "mase_scale": [list(x) for x in scales],
                       "mase_scale_test": _test_scales(panel, T, (list(layout.seasons) or [1])[0])}
        # One series: its normalisation; several: the first series' (the others are in `several`).
        mean, std = series_norm[0]
        task = cls(cfg, panel.tables[0].columns, mean, std, layout, cycles, scales[0], several)
        task._prepare(panel, calendar, series_norm, scales, rows_per_step, rank, world_size)
        task.data_record = record
        # data.conformal_from's scores, read now: a bad path stops the fit before training, and the checkpoint
        # keeps them, so eval and predict need neither those files nor the directory the paths are relative to
        task._scores = _stored_scores(saved["task_state"], layout) if saved is not None else None
        if task._scores is None and d.conformal_from and d.conformal and layout.quantiles:
            task._scores = [task._scores_of(path, torch.device("cpu")) for path in d.conformal_from]
        return task

    def _prepare(self, panel: Panel, calendar, series_norm, scales, rows_per_step, rank, world_size) -> None:
        layout, rows = self.layout, panel.row_series()
        self.panel, self.ids = panel, list(panel.ids)
        self.series_norm, self.series_scale = series_norm, scales
        self.series = PreparedSeries(panel.values, panel.observed, calendar,
                                     np.asarray([m for m, _ in series_norm])[rows],
                                     np.asarray([sd for _, sd in series_norm])[rows], layout,
                                     self._row_scales(panel, scales, rows), rows, panel.ids)
        self.norm, self.values, self.observed = self.series.norm, self.series.values, self.series.observed
        self.blocks = {"val": panel.blocks[0][1], "test": panel.blocks[0][2]}  # the (first) series' blocks
        which = "train+val" if self.cfg.data.refit else "train"
        self.train_starts = torch.from_numpy(panel.starts(which, layout.input_len, layout.horizon, layout.history))
        if len(self.train_starts) == 0:
            raise _no_training_window(panel, layout, self.cfg.data)
        for split in ("val", "test"):
            starts = panel.starts(split, layout.input_len, layout.horizon, layout.history)
            self._held[split] = HeldOut(self.series, starts, split)
        if len(self._held["val"].starts) == 0:
            val_b = panel.blocks[0][1]
            raise GrutrainError(f"the validation block has {val_b.stop - val_b.start} rows, too few for one window "
                                f"(data.horizon={layout.horizon} targets, {layout.history} rows of history before "
                                "them); raise data.val_fraction or lower data.horizon")
        self.sampler = ShuffledBatches(len(self.train_starts), rows_per_step, self.cfg.train.seed + 1,
                                       self._make_batch, rank=rank, world_size=world_size, what="windows")
        self.items_per_batch = self.sampler.global_batch * layout.input_len  # time steps read

    def _row_scales(self, panel: Panel, scales, rows) -> np.ndarray:
        """[N, T] the MASE scale of each row: a panel's test rows take the scale of all rows before the test
        block (M4's in-sample scale at the forecast origin), the others that of the training rows."""
        out = np.array(np.asarray(scales, dtype=np.float64)[rows])
        if self.several is None:
            return out
        for offset, blocks, scale in zip(panel.offsets, panel.blocks, self.several["mase_scale_test"]):
            test = blocks[2]
            out[offset + test.start:offset + test.stop] = scale
        return out

    def _make_batch(self, indices: torch.Tensor):
        starts = self.train_starts[indices]
        x, anchor = self.series.inputs(starts)
        return x, anchor, self.series.targets(starts)

    # ------------------------------------------------------------------ built from a checkpoint

    @classmethod
    def from_checkpoint(cls, cfg, task_state: dict) -> "ForecastTask":
        norm = check_normalisation(task_state, cfg)
        layout, cycles, scale = saved_layout(task_state, cfg)
        task = cls(cfg, norm["columns"], norm["mean"], norm["std"], layout, cycles, scale,
                   task_state.get("forecast_series"))
        task._stored = task_state.get("eval_series")
        task._scores = _stored_scores(task_state, layout)  # None: read data.conformal_from's files on first use
        return task

    # ------------------------------------------------------------------ the model

    def build_model(self) -> nn.Module:
        n = self.cfg.data.ensemble
        return self._one_model() if n == 1 else MedianEnsemble([self._one_model() for _ in range(n)])

    def _one_model(self) -> SequenceModel:
        layout = self.layout
        model = SequenceModel(self.cfg.model, output_size=layout.n_outputs, input_size=layout.n_inputs, per_step=False)
        if layout.anchor_lag > 1 or layout.quantiles:
            # A zero head forecasts the anchor exactly: training starts from the baseline, not from noise
            # around it (measured on data/taylor.csv, see docs/forecasting.md).
            torch.nn.init.zeros_(model.head.weight)
            torch.nn.init.zeros_(model.head.bias)
        return model

    def loss(self, model, batch, hidden):
        x, anchor, y = batch
        output, _ = model(x)
        output, anchor, y = per_member(output, anchor, y)  # an ensemble: every member's loss, averaged
        forecast = add_anchor(output, anchor, self.layout)  # [B, H, T, Q]
        if self.layout.quantiles:
            return pinball_loss(forecast, y.float(), self.layout.quantiles), None
        if self.layout.loss == "mae":
            return F.l1_loss(forecast[..., 0], y.float()), None
        return F.mse_loss(forecast[..., 0], y.float()), None

    # ------------------------------------------------------------------ held-out data

    def _numbers(self, ids: list[str]) -> tuple[list, list]:
        """[(mean, std)] and [MASE scale] of each series named in `ids`."""
        return saved_series(self.several, ids, {"mean": self.mean, "std": self.std}, self.mase_scale)

    def _split(self, split: str) -> HeldOut:
        if split not in self._held:
            series, starts = stored_series(self._stored, self.several, self.layout, len(self.columns), split,
                                           self._numbers)
            known = self._stored.get("classical") if isinstance(self._stored, dict) else None
            for name, values in (known if isinstance(known, dict) else {}).items():
                if name.startswith(f"{split}_") and isinstance(values, torch.Tensor):
                    series.remember_classical(name[len(split) + 1:], starts, values.double().numpy())
            self._held[split] = HeldOut(series, starts, split)
        return self._held[split]

    def eval_starts(self, split: str) -> np.ndarray:
        return self._split(split).starts

    def has_split(self, split: str) -> bool:
        return len(self.eval_starts(split)) > 0

    def held_out(self, split: Split) -> HeldOut:
        """The prepared rows and windows of a held-out split, or every window of another CSV."""
        layout = self.layout
        if isinstance(split, Path):
            panel = load_panel(self.cfg.data, path=split, role="--data", split=False)
            _check_log_targets(panel, self.cfg.data, f"--data {split}")
            series_norm, scales = self._numbers(panel.ids)
            _, calendar = calendar_of_panel(panel, self.cfg, self.cycles)
            rows = panel.row_series()
            series = PreparedSeries(panel.values, panel.observed, calendar,
                                    np.asarray([m for m, _ in series_norm])[rows],
                                    np.asarray([sd for _, sd in series_norm])[rows], layout,
                                    np.asarray(scales)[rows], rows, panel.ids)
            starts = panel.starts("all", layout.input_len, layout.horizon, layout.history)
            if len(starts) == 0:
                longest = " in its longest series" if len(panel.ids) > 1 else ""
                raise GrutrainError(f"{split} has {rows_text(max(len(t) for t in panel.tables))}{longest}; evaluating "
                                    f"one window needs {layout.history + layout.horizon} ({describe_window(layout)} "
                                    f"and {layout.history} rows of history for the anchor and the seasonal baselines)")
            need = layout.history + layout.horizon
            short = [f"{name!r} ({len(table)})" for name, table in zip(panel.ids, panel.tables) if len(table) < need]
            if short:  # the others are scored: say which series are not, rather than average over fewer silently
                note(f"{split}: {len(short)} series shorter than one window ({need} rows) not scored: "
                     f"{', '.join(short[:5])}{', ...' if len(short) > 5 else ''}", warning=True)
            return HeldOut(series, starts, str(split))
        held = self._split(split)
        if len(held.starts) == 0:
            raise GrutrainError(f"the {split} split holds no window (data.{split}_fraction was too small); "
                                "evaluate another split or pass --data")
        return held

    def evaluate(self, model, split: Split, device, amp_dtype=None, *,
                 whole: bool = True) -> dict[str, float]:  # whole: always (no cap here)
        held = self.held_out(split)
        metrics = held.series.score(model, held.starts, device, amp_dtype, conformal=self._conformal(model, split, device))
        ratio = held.series.baselines(held.starts, metrics["mae"]).get("mae_vs_baseline")
        if ratio is not None:  # none when the baseline is perfect (a constant series)
            metrics["mae_vs_baseline"] = ratio
        return _known(metrics)

    def report(self, model, split: Split, device, origins: int | None = None) -> dict:
        """The model's metrics next to every baseline's on the same windows (per series too, with several);
        `origins`: only the last N forecast origins of each series, `horizon` rows apart (rolling origin)."""
        held = self.held_out(split)
        starts = held.starts
        if split == "val" and self.cfg.data.refit:
            note("this model was trained through the validation block (data.refit=true): its validation figures "
                 "are in-sample; judge it on the test block or on a checkpoint fitted without refit", warning=True)
        if origins is not None:
            groups = held.series.row_series[starts] if held.series.row_series is not None else None
            starts = rolling_origins(starts, groups, self.layout.horizon, origins)
        metrics = held.series.score(model, starts, device, by_step=True,
                                    conformal=self._conformal(model, split, device))
        out = {"split": held.name, "windows": len(starts), **metrics, **held.series.baselines(starts, metrics["mae"])}
        if origins is not None:
            out["origins"] = origins
        return _known(out)

    def _conformal(self, model, split: Split, device) -> np.ndarray | None:
        """CQR offsets for any data but the validation block itself, from this model's validation block
        (not after a refit: it was trained on) pooled with those of data.conformal_from (None: no
        quantiles, data.conformal off, or no scores)."""
        if not self.layout.quantiles or not self.cfg.data.conformal or split == "val":
            return None
        if self._scores is None:  # the other checkpoints' scores, once
            self._scores = [self._scores_of(path, device) for path in self.cfg.data.conformal_from]
        own = [self._validation_scores(model, device)] if not self.cfg.data.refit and self.has_split("val") else []
        scores = own + self._scores
        return offsets_from_scores(np.concatenate(scores, axis=1), self.layout.quantiles) if scores else None

    def _validation_scores(self, model, device) -> np.ndarray:
        held = self._split("val")
        return held.series.cqr_scores(model, held.starts, device)

    def _scores_of(self, path: str, device) -> np.ndarray:
        """The CQR scores of an earlier-origin checkpoint on its own validation block, with this model's
        forecast methods after the network (data.theta_weight, data.mstl_weight), so that they score what is
        calibrated."""
        try:
            payload = load_checkpoint(path, map_location=device)
        except GrutrainError as exc:
            raise GrutrainError(f"data.conformal_from: {exc}") from None
        try:
            cfg = validate_as(ForecastConfig, payload["config"])
            other = ForecastTask.from_checkpoint(cfg, payload["task_state"])
            model = other.build_model()
            model.load_state_dict(payload["model"])
        except (GrutrainError, ValueError, KeyError, RuntimeError, TypeError) as exc:
            raise GrutrainError(f"data.conformal_from: {path} is not a forecast checkpoint this model can use "
                                f"({str(exc).splitlines()[0][:200]})") from None
        mine = self.layout
        if (other.layout.quantiles, other.layout.horizon, other.layout.n_targets) != (mine.quantiles, mine.horizon,
                                                                                     mine.n_targets):
            raise GrutrainError(f"data.conformal_from: {path} forecasts other quantiles, horizon or targets "
                                "than this model")
        other.layout = replace(other.layout, theta_weight=mine.theta_weight, mstl_weight=mine.mstl_weight)
        return other._validation_scores(model.to(device).eval(), device)

    def baselines(self) -> dict[str, float]:
        out = {}
        for split in ("val", "test"):
            if self.has_split(split):
                held = self._split(split)
                metrics = _known(held.series.baselines(held.starts))
                out.update({f"{split}/{k}": v for k, v in metrics.items() if isinstance(v, float)})
        return out

    def state(self) -> dict:
        # The held-out rows (and the history their first windows read) travel with the model,
        # so `grutrain eval` needs only the checkpoint.
        series = self.series
        state = {
            "normalisation": {"columns": list(self.columns), "n_targets": self.layout.n_targets,
                              "mean": list(self.mean), "std": list(self.std)},
            "forecast_layout": {**self.layout.to_dict(), "calendar_cycles": list(self.cycles),
                                "mase_scale": list(self.mase_scale)},
        }
        if getattr(self, "data_record", None) is not None:  # fit: what it trained on, for --resume
            state[DATA_KEY] = self.data_record
        if self._scores:
            state[CONFORMAL_KEY] = [torch.from_numpy(np.ascontiguousarray(scores)) for scores in self._scores]
        if self.several is None:
            # Theta and MSTL (data.theta_weight, mstl_weight) read the whole history before each origin: then
            # every row travels
            first = 0 if self.layout.classical_weight > 0 else max(0, self.blocks["val"].start - self.layout.history)
            state["eval_series"] = {
                "values": torch.from_numpy(self.values[first:].copy()),
                "observed": torch.from_numpy(self.observed[first:].copy()),
                "calendar": torch.from_numpy(np.ascontiguousarray(series.calendar[first:])),
                **{split: [b.start - first, b.stop - first] for split, b in self.blocks.items()},
                **self._known_classical()}
            return state
        # Several series: every row (they are small), and per series its normalisation and MASE scale.
        state["forecast_series"] = self.several
        state["eval_series"] = {
            "values": torch.from_numpy(self.values.copy()), "observed": torch.from_numpy(self.observed.copy()),
            "calendar": torch.from_numpy(np.ascontiguousarray(series.calendar)),
            "row_series": torch.from_numpy(series.row_series.copy()),
            **{f"{split}_starts": torch.from_numpy(self.eval_starts(split).copy()) for split in ("val", "test")},
            **self._known_classical()}
        return state

    def _known_classical(self) -> dict:
        """The held-out windows' Theta and MSTL forecasts computed so far ({} without them): eval and predict
        read them instead of refitting at every origin (seconds to a minute on a long series)."""
        known = {f"{split}_{name}": torch.from_numpy(values) for split, held in self._held.items()
                 for name, values in held.series.known_classical(held.starts).items()}
        return {"classical": known} if known else {}

    # ------------------------------------------------------------------ figures, extras, export, predict

    def on_evaluation(self, model, device, step: int, logger) -> None:
        if plots.have_matplotlib():  # the plot extra; without it TensorBoard just has no figure
            held = self.held_out("val")
            data = forecast_data(model, held.series, held.starts, device)
            logger.figure(step, "val/forecast", plots.forecast_figure(**data, names=self.cfg.data.target_columns))

    def final_extras(self, model, device) -> dict:
        names = {split: self._split(split).series.baselines(self.eval_starts(split))["baseline"]
                 for split in ("val", "test") if self.has_split(split)}
        return {"baseline": names, "anchor_lag": self.layout.anchor_lag, "calendar": list(self.cycles)}

    def figure(self, model, split: Split, device):
        held = self.held_out(split)
        data = forecast_data(model, held.series, held.starts, device)
        name = Path(held.name).name if isinstance(split, Path) else held.name
        horizon = self.layout.horizon
        ahead = f" (the first of each forecast's {horizon} steps)" if horizon > 1 else ""
        return plots.forecast_figure(**data, names=self.cfg.data.target_columns,
                                     title=f"{name}: one-step-ahead forecasts{ahead}")

    @staticmethod
    def export_io(model) -> nn.Module:
        if isinstance(model, MedianEnsemble):
            raise GrutrainError("export takes one model; this checkpoint holds an ensemble (data.ensemble > 1)")
        return SequenceIO(model, "output")  # the change from the last input value of each target, normalised

    def usage(self) -> dict:
        data, layout, n_targets = self.cfg.data, self.layout, self.layout.n_targets
        norm = {"columns": list(self.columns), "n_targets": n_targets, "mean": list(self.mean), "std": list(self.std)}
        plain = (layout.anchor_lag <= 1 and not self.cycles and not layout.reads_future and not layout.quantiles
                 and self.several is None and layout.transform == "none" and layout.classical_weight == 0)
        if not plain:
            # Seasonal anchoring, calendar or known inputs, quantiles, several series, the log transform or a
            # classical partner: the inputs and outputs are those of grutrain/tasks/forecast/windows.py
            # (make_inputs, add_anchor), described in docs/forecasting.md; what follows the network, in words.
            after = ["add_anchor"]
            if layout.transform == "log":
                after.append("then expm1 (data.transform=log: the model predicts log(1 + y))")
            if layout.classical_weight > 0:
                after.append(f"then the combination {1 - layout.classical_weight:g} x that + {layout.theta_weight:g} x "
                             f"the Theta method's + {layout.mstl_weight:g} x MSTL's forecast, each fitted on the "
                             "series' rows before the origin (theta.py, mstl.py; the exported network is the GRU's part)")
            if layout.quantiles and data.conformal:
                after.append("then the intervals widened by the CQR offsets of the validation block (conformal.py)")
            return {"normalisation": norm,
                    "forecast_layout": {**layout.to_dict(), "calendar_cycles": list(self.cycles),
                                        "mase_scale": list(self.mase_scale)},
                    "forecast_series": self.several, "target_columns": list(data.target_columns),
                    "preprocessing": "see docs/forecasting.md, 'What the model reads' (make_inputs)",
                    "postprocessing": f"see docs/forecasting.md, 'What the model reads' ({'; '.join(after)}); "
                                      "grutrain predict does all of it"}
        return {"normalisation": norm,
                "input_len": data.input_len, "horizon": data.horizon, "target_columns": list(data.target_columns),
                "input_columns": list(data.input_columns),
                "preprocessing": "z = (value - mean) / std for the last input_len rows of the columns in "
                                 "normalisation.columns order (targets, then extra inputs); target column j is fed "
                                 "relative to the window's last value, z[:, :, j] - z[:, -1, j]; extra inputs as z",
                "postprocessing": f"forecast[b, k, j] = z_last[b, j] + output[b].reshape(horizon, {n_targets})"
                                  "[k, j], then * std[j] + mean[j], with z_last = z[b, -1, j] taken before the "
                                  "subtraction: the value of target j, k+1 steps after the input"}

    def predict(self, model, input_path: Path, device) -> list[dict]:
        """The `horizon` values after the end of the input CSV (of each series in it), on the original
        scale, one row per step ahead.

        Each row: the series id (long format), step (1..horizon), the time of that step when the CSV
        has the time column and its spacing can be inferred (last time + step * the median spacing), one
        value per target (the median with quantiles) and, with quantiles, `<target>_q<quantile>` columns.
        """
        cfg, layout = self.cfg, self.layout
        if layout.n_known:
            raise GrutrainError("predict does not yet take the future values of data.known_columns; "
                                "evaluate this model with `grutrain eval --data` instead")
        panel = load_panel(cfg.data, path=input_path, role="--input", split=False)
        _check_log_targets(panel, cfg.data, f"--input {input_path}")
        series_norm, scales = self._numbers(panel.ids)
        conformal = self._conformal(model, input_path, device)
        rows = []
        for name, table, (mean, std), scale in zip(panel.ids, panel.tables, series_norm, scales):
            for row in predict_series(model, cfg, table, mean, std, scale, layout, self.cycles, input_path, device,
                                      conformal):
                rows.append({cfg.data.id_column: name, **row} if cfg.data.id_column else row)
        return rows


def _known(metrics: dict) -> dict:
    """The metrics without a MASE that cannot be known: a checkpoint from before MASE has no scale."""
    return {k: v for k, v in metrics.items()
            if not (k.endswith("mase") and isinstance(v, float) and math.isnan(v))}


def _with_seasons(cfg, saved: dict | None, rank: int):
    """The config with data.season: auto replaced by the seasons found (or, resuming, those trained with)."""
    if saved is not None:
        found = list(saved["task_state"].get("forecast_layout", {}).get("seasons", []))
    else:
        panel = load_panel(cfg.data)
        found = seasons.detect(panel.tables, [b[0] for b in panel.blocks], len(cfg.data.target_columns),
                               cfg.data.calendar == "epoch_seconds")
        if rank == 0:
            print(f"data.season: auto -> {found or 'none'}", file=sys.stderr, flush=True)
    data = cfg.data.model_copy(update={"season": found or None})
    return cfg.model_copy(update={"data": data})


def _test_scales(panel: Panel, n_targets: int, season: int) -> list[list[float]]:
    """Per series, the MASE scale of the rows before its test block (padding left out)."""
    return [[float(x) for x in seasonal_scale(t.values[b[0].start:b[2].start, :n_targets], season)]
            for t, b in zip(panel.tables, panel.blocks)]


CONFORMAL_KEY = "conformal_from_scores"  # task state: data.conformal_from's CQR scores, one array per checkpoint


def _stored_scores(task_state: dict, layout: WindowLayout) -> list[np.ndarray] | None:
    """The data.conformal_from scores a checkpoint keeps ([intervals, W, horizon, targets] each), or None when it
    keeps none or they do not fit this model (then the files are read again)."""
    stored = task_state.get(CONFORMAL_KEY)
    if not isinstance(stored, list) or not stored:
        return None
    shape = (len(interval_pairs(layout.quantiles)), layout.horizon, layout.n_targets)
    if not all(isinstance(t, torch.Tensor) and t.ndim == 4 and (t.shape[0], *t.shape[2:]) == shape for t in stored):
        return None
    return [t.double().numpy() for t in stored]


def _check_log_targets(panel: Panel, d, source: str) -> None:
    """fit refuses negative training targets under data.transform=log; a file given to eval or predict too, rather
    than forecasting the log of values clipped to 0."""
    T = len(d.target_columns)
    if d.transform == "log" and any((t.values[:, :T][t.observed[:, :T]] < 0).any() for t in panel.tables):
        raise GrutrainError(f"{source}: a target column holds negative values, and this model reads log(1 + y) "
                            "(data.transform=log), for non-negative series only; give non-negative values")


def _no_training_window(panel: Panel, layout: WindowLayout, d) -> GrutrainError:
    """Why no series gives a training window, told on the longest training block (refit: through validation)."""
    spans = [(b[1].stop if d.refit else b[0].stop) - b[0].start for b in panel.blocks]
    k = int(np.argmax(spans))
    where = (" (series " + repr(panel.ids[k]) + ")") if panel.ids[k] else ""
    before = max(layout.input_len, layout.history)
    anchor = ", set data.anchor=naive" if layout.history > layout.input_len and d.anchor != "naive" else ""
    return GrutrainError(f"no training window: a window needs data.horizon={layout.horizon} target rows in the "
                         f"training block after {before} rows of history (data.input_len, and one anchor season); the "
                         f"{'longest ' if len(spans) > 1 else ''}training block{where} has {spans[k]} rows, "
                         f"{panel.blocks[k][0].start} before it; lower data.horizon or data.input_len{anchor}, "
                         "or give a longer series")


def _split_keys(d) -> str:
    """The keys that size the held-out blocks: the competition protocol's rows, or the fractions."""
    return "data.val_rows/data.test_rows" if (d.val_rows, d.test_rows) != (None, None) else \
        "data.val_fraction/data.test_fraction"


def _check_lengths(panel: Panel, cfg) -> None:
    d = cfg.data
    layout = base_layout(cfg)
    needed = layout.input_len + layout.horizon
    for name, table, (train_b, _, _) in zip(panel.ids, panel.tables, panel.blocks):
        what = f"series {name!r} of {d.path}" if name else str(d.path)
        if len(table) < needed:
            after = " after dropping rows with blanks" if d.missing == "drop" else ""
            raise GrutrainError(f"{what} has {rows_text(len(table))}{after}; one window needs {needed} "
                                f"({describe_window(layout)}); lower them or give a longer series")
        if train_b.stop < needed:
            raise GrutrainError(f"the training block {'of series ' + repr(name) + ' ' if name else ''}has "
                                f"{train_b.stop} of {len(table)} rows, fewer than the {needed} one window needs "
                                f"({describe_window(layout)}); lower {_split_keys(d)}, "
                                "data.input_len or data.horizon")
        season = max([1, *d.seasons])
        if train_b.stop - train_b.start <= season:
            raise GrutrainError(f"the training block {'of series ' + repr(name) + ' ' if name else ''}has "
                                f"{train_b.stop - train_b.start} rows; its MASE scale needs more than one season "
                                f"({season}); lower {_split_keys(d)} or give a longer series")


def _data_record(path, panel: Panel) -> dict:
    """The CSV's digest and the rows of each split over all series (data/digest.py)."""
    rows = {"train": 0, "val": 0, "test": 0}
    for blocks in panel.blocks:
        for name, block in zip(rows, blocks or ()):
            rows[name] += block.stop - block.start
    return data_record([file_digest(path)], rows)
