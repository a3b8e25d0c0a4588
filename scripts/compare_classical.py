"""grutrain next to the classical forecasters a forecasting user would pick instead, on the same
series and the same rolling-origin windows: statsforecast's MSTL (multiple seasonal-trend
decomposition with an AutoETS trend) and AutoETS, and every seasonal naive.

The windows are every --origin-step-th (default: data.horizon, so one forecast a day for a day
ahead) of those `grutrain eval CKPT --split test` scores, counted back from the last one: one
forecast of data.horizon steps from each origin, all targets inside the test block. The classical
models are refitted at every origin on all rows before it (the train and validation blocks and the
test rows already seen), as statsforecast's cross_validation does; grutrain was trained once on the
training block and reads only its input window. MASE uses the scale grutrain reports (the in-sample seasonal-naive MAE of the
training rows with the first season).

statsforecast is an optional extra (pip install -e '.[classical]'), never a grutrain dependency.

    python scripts/compare_classical.py runs/taylor-1/checkpoints/best.pt
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
    args = parser.parse_args()
    try:
        import pandas as pd
        from statsforecast import StatsForecast
        from statsforecast.models import MSTL, AutoETS
    except ImportError:
        raise SystemExit("this script needs statsforecast: pip install -e '.[classical]'") from None
    from grutrain.data.timeseries import load_series
    from grutrain.tasks import open_checkpoint

    device = torch.device("cpu")
    opened = open_checkpoint(args.checkpoint, device)
    model, cfg = opened.model, opened.cfg
    d = cfg.data
    if len(d.target_columns) != 1 or d.id_column:
        raise SystemExit("the comparison takes a model of one series and one target")
    series, starts, _ = opened.task.held_out("test")
    horizon, seasons = d.horizon, d.seasons
    step = args.origin_step or horizon
    starts = starts[::-1][::step][::-1].copy()  # the last window and every step-th before it
    started = time.perf_counter()
    ours = series.score(model, starts, device)
    rows = {"grutrain": (ours["mae"], ours["rmse"], ours["mase"], time.perf_counter() - started)}
    for name, metrics in _baselines(series, starts).items():
        rows[name] = metrics + (0.0,)

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
                                 test_size=test_b.stop - first_origin, refit=True)
        predicted = cv[classical.alias if hasattr(classical, "alias") else name].to_numpy().reshape(n_windows, horizon)
        err = predicted - actual
        rows[name] = (float(np.abs(err).mean()), float(np.sqrt((err ** 2).mean())),
                      float(np.abs(err).mean() / scale), time.perf_counter() - started)

    best = min(v[0] for k, v in rows.items() if k.startswith("seasonal") or k == "naive")
    print(f"{d.path}: {n_windows} windows of {horizon} steps, origins {step} rows apart, in the test block")
    print("| model | test MAE | RMSE | MASE | MAE / best seasonal naive | wall s |")
    print("|---|---|---|---|---|---|")
    for name, (mae, rmse, mase, wall) in rows.items():
        print(f"| {name} | {mae:.4g} | {rmse:.4g} | {mase:.3f} | {mae / best:.3f} | {wall:.1f} |")


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
