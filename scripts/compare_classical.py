"""grutrain next to the classical forecasters a forecasting user would pick instead, on the same
series and the same rolling-origin windows: statsforecast's MSTL (multiple seasonal-trend
decomposition with an AutoETS trend) and AutoETS, and every seasonal naive.

The windows are every --origin-step-th (default: data.horizon, so one forecast a day for a day
ahead) of those `grutrain eval CKPT --split test` scores, counted back from the last one: one
forecast of data.horizon steps from each origin, all targets inside the test block. The classical
models are refitted at every origin on all rows before it (the train and validation blocks and the
test rows already seen), as statsforecast's cross_validation does; grutrain was trained once on the
training block and reads only its input window. MASE uses the scale grutrain reports (the in-sample seasonal-naive MAE of the
training rows with the first season). The coverage of each model's 80% interval comes with them (grutrain's
0.1-0.9 quantiles as `eval` calibrates them; statsforecast's level=[80]).

A panel (data.id_column, e.g. configs/tourism_quarterly.yaml) is compared under the competition
protocol instead: from the last --origins forecast origins of every series in the test block (1:
the official last-h block), grutrain's forecast next to statsforecast's Naive, SeasonalNaive,
AutoETS and AutoTheta fitted on every row of the series before the origin, all scored by grutrain's
own metrics (MASE at the origin's scale, sMAPE and MAPE averaged per series, then over series), with
the coverage of each one's 80% interval (grutrain's: the 0.1-0.9 quantiles as `eval` reports them).

statsforecast is an optional extra (pip install -e '.[classical]'), never a grutrain dependency.

    python scripts/compare_classical.py runs/taylor-1/checkpoints/best.pt
    python scripts/compare_classical.py runs/tourism_quarterly-1/checkpoints/last.pt
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a forecast checkpoint with one target and one series")
    parser.add_argument("--origin-step", type=int, default=None, help="rows between origins (default: horizon)")
    parser.add_argument("--origins", type=int, default=1, help="panels: forecast origins per series (default 1)")
    args = parser.parse_args()
    try:
        import pandas as pd
        from statsforecast import StatsForecast
        from statsforecast.models import MSTL, AutoETS
    except ImportError:
        raise SystemExit("this script needs statsforecast (not installed): pip install -e '.[classical]' "
                         "or pip install statsforecast") from None
    from grutrain.data.timeseries import load_series
    from grutrain.tasks.checkpoints import open_checkpoint

    device = torch.device("cpu")
    opened = open_checkpoint(args.checkpoint, device)
    model, cfg = opened.model, opened.cfg
    d = cfg.data
    if len(d.target_columns) != 1:
        raise SystemExit("the comparison takes a model of one target")
    if d.id_column:
        return _panel(opened, args.origins, pd, StatsForecast)
    series, starts, _ = opened.task.held_out("test")
    horizon, seasons = d.horizon, d.seasons
    step = args.origin_step or horizon
    starts = starts[::-1][::step][::-1].copy()  # the last window and every step-th before it
    started = time.perf_counter()
    ours = series.score(model, starts, device, conformal=opened.task._conformal(model, "test", device))
    rows = {"grutrain": (ours["mae"], ours["rmse"], ours["mase"], ours.get("coverage_80", float("nan")),
                         time.perf_counter() - started)}
    for name, metrics in _baselines(series, starts).items():
        rows[name] = metrics + (float("nan"), 0.0)

    table, (train_b, val_b, test_b) = load_series(d)
    y = table.values[:, 0]
    shift = test_b.start - int(opened.payload["task_state"]["eval_series"]["test"][0])  # the checkpoint keeps rows from val - history on
    first_origin = int(starts[0]) + shift  # row of the first target of the first scored window
    n_windows = len(starts)
    assert int(starts[-1]) + shift + horizon == test_b.stop, "windows should run to the end of the test block"
    df = pd.DataFrame({"unique_id": "s", "ds": np.arange(len(y)), "y": y})
    df = df.iloc[: test_b.stop]
    models = {"MSTL": MSTL(season_length=seasons or [1]),
              "AutoETS": AutoETS(season_length=min(s for s in seasons if s <= 24 * 7) if seasons else 1)}
    scale = series.row_scale[0, 0]
    actual = series.values[starts[:, None] + np.arange(horizon), 0]
    for name, classical in models.items():
        started = time.perf_counter()
        sf = StatsForecast(models=[classical], freq=1, n_jobs=1)
        cv = sf.cross_validation(h=horizon, df=df, n_windows=n_windows, step_size=step,
                                 test_size=test_b.stop - first_origin, refit=True, level=[80])
        alias = classical.alias if hasattr(classical, "alias") else name
        predicted, lower, upper = (cv[column].to_numpy().reshape(n_windows, horizon)
                                   for column in (alias, f"{alias}-lo-80", f"{alias}-hi-80"))
        err = predicted - actual
        rows[name] = (float(np.abs(err).mean()), float(np.sqrt((err ** 2).mean())),
                      float(np.abs(err).mean() / scale), float(((actual >= lower) & (actual <= upper)).mean()),
                      time.perf_counter() - started)

    best = min(v[0] for k, v in rows.items() if k.startswith("seasonal") or k == "naive")
    print(f"{d.path}: {n_windows} windows of {horizon} steps, origins {step} rows apart, in the test block")
    print("| model | test MAE | RMSE | MASE | MAE / best seasonal naive | 80% interval coverage | wall s |")
    print("|---|---|---|---|---|---|---|")
    for name, (mae, rmse, mase, covered, wall) in rows.items():
        coverage = "-" if np.isnan(covered) else f"{100 * covered:.1f}%"
        print(f"| {name} | {mae:.4g} | {rmse:.4g} | {mase:.3f} | {mae / best:.3f} | {coverage} | {wall:.1f} |")


def _panel(opened, n_origins: int, pd, StatsForecast) -> None:
    """The competition table: grutrain and statsforecast's models on the same windows of every series."""
    from statsforecast.models import AutoETS, AutoTheta, Naive, SeasonalNaive

    from grutrain.tasks.forecast.metrics import interval_coverage
    from grutrain.tasks.forecast.windows import rolling_origins

    device = torch.device("cpu")
    series, starts, _ = opened.task.held_out("test")
    layout = opened.task.layout
    horizon, season = layout.horizon, (list(layout.seasons) or [1])[0]
    starts = rolling_origins(starts, series.row_series[starts], horizon, n_origins)
    actual, mask = series._actual(starts)
    rows = {}
    started = time.perf_counter()
    conformal = opened.task._conformal(opened.model, "test", device)  # the intervals `eval` reports
    quantiles = series.forecast(opened.model, starts, device, conformal=conformal)
    forecast = quantiles[..., layout.median_index or 0]
    covered = interval_coverage(quantiles[..., layout.quantiles.index(0.1)], quantiles[..., layout.quantiles.index(0.9)],
                                actual, mask) if {0.1, 0.9} <= set(layout.quantiles) else float("nan")
    rows["grutrain"] = (series.point_metrics(forecast, actual, mask, starts), covered, time.perf_counter() - started)
    frames = []
    for w, start in enumerate(starts):  # each window: the observed rows of its series before the origin
        k = series.row_series[start]
        first = np.flatnonzero(series.row_series == k)[0]
        history = series.values[first:start, 0][series.observed[first:start, 0]]
        frames.append(pd.DataFrame({"unique_id": w, "ds": np.arange(len(history)), "y": history}))
    df = pd.concat(frames)
    models = {"Naive": Naive(), "SeasonalNaive": SeasonalNaive(season_length=season),
              "AutoETS": AutoETS(season_length=season), "AutoTheta": AutoTheta(season_length=season)}
    for name, classical in models.items():
        started = time.perf_counter()
        out = StatsForecast(models=[classical], freq=1, n_jobs=1).forecast(df=df, h=horizon, level=[80])
        out = (out.reset_index() if "unique_id" not in out.columns else out).sort_values(["unique_id", "ds"])
        predicted, lower, upper = (out[column].to_numpy().reshape(len(starts), horizon, 1)
                                   for column in (name, f"{name}-lo-80", f"{name}-hi-80"))
        rows[name] = (series.point_metrics(predicted, actual, mask, starts), interval_coverage(lower, upper, actual, mask),
                      time.perf_counter() - started)
    print(f"{opened.cfg.data.path}: {len(starts)} windows of {horizon} steps ({n_origins} origin(s) per series), "
          "test block")
    print("| model | MASE | sMAPE | MAPE | 80% interval coverage | wall s |")
    print("|---|---|---|---|---|---|")
    for name, (m, covered, wall) in rows.items():
        print(f"| {name} | {m['mase']:.3f} | {m['smape']:.2f} | {m['mape']:.2f} | {100 * covered:.1f}% | {wall:.1f} |")


def _baselines(series, starts) -> dict:
    metrics = series.baselines(starts)
    out = {}
    for key in metrics:
        if key.endswith("_mae") and not key.startswith("baseline"):
            name = key[: -len("_mae")]
            out[name] = (metrics[f"{name}_mae"], metrics[f"{name}_rmse"], metrics[f"{name}_mase"])
    return out


if __name__ == "__main__":
    main()
