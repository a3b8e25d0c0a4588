"""task: forecast -- reading CSVs (sorting, blanks, time axes), chronological windows without leaks,
normalisation from the training block, metrics and baselines against computations by hand,
`grutrain fit/eval/predict` end to end, and every bad input refused with exit 1 and one line."""

from __future__ import annotations

import csv
import json
import math
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from grutrain.files.checkpoint import load_checkpoint
from grutrain.cli import main
from grutrain.tasks import validate_config
from grutrain.data.timeseries import (TimeAxis, fill_missing, forecast_errors, load_series, naive_forecast,
                                      read_series_csv, seasonal_naive_forecast, split_blocks, window_starts)
from grutrain.errors import GrutrainError
from grutrain.tasks.checkpoints import open_checkpoint
from grutrain.tasks.forecast.task import ForecastTask

REPO = Path(__file__).resolve().parents[3]
L, H, S = 12, 3, 12  # input_len, horizon, season of the tiny runs


def months(n: int, start=(1990, 1)) -> list[str]:
    y, m = start
    out = []
    for _ in range(n):
        out.append(f"{y:04d}-{m:02d}")
        m += 1
        if m == 13:
            y, m = y + 1, 1
    return out


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def series_rows(n: int = 240, seed: int = 0) -> list[list]:
    """Monthly (YYYY-MM) rows: a seasonal target with a trend, an extra input and an ignored text column."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    y = 10 + 3 * np.sin(2 * np.pi * t / 12) + 0.02 * t + 0.1 * rng.standard_normal(n)
    x2 = np.cos(2 * np.pi * t / 12)
    return [[when, f"{a:.4f}", f"{b:.4f}", "note"] for when, a, b in zip(months(n), y, x2)]


HEADER = ["month", "y", "x2", "comment"]


def forecast_config(path: Path, run_dir: Path, **data) -> dict:
    return {
        "task": "forecast",
        "data": {"path": str(path), "target_columns": ["y"], "input_columns": ["x2"], "time_column": "month",
                 "input_len": L, "horizon": H, "season": S, "missing": "error",
                 # the naive anchor and no calendar inputs: what these tests compute by hand
                 # (tests/test_forecast_anchoring.py covers the seasonal anchor and calendar inputs)
                 "anchor": "naive", "calendar": "none",
                 "val_fraction": 0.2, "test_fraction": 0.2, **data},
        "model": {"hidden_size": 8},
        "optim": {"lr": 0.01},
        "train": {"max_steps": 12, "batch_size": 16, "eval_every": 6, "checkpoint_every": 6, "log_every": 3,
                  "device": "cpu", "threads": 1},
        "run": {"dir": str(run_dir), "name": "fc"},
    }


def write_config(tmp_path: Path, cfg: dict, name: str = "fc.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def cli(args, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(result, *needles):
    code, out, err = result
    assert code == 1, (out, err)
    assert "Traceback" not in err + out
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def naive_reference(values: np.ndarray, starts, horizon: int, season: int | None):
    """Baselines by explicit loops, independent of the vectorised code."""
    naive, seasonal, actual = [], [], []
    for s in starts:
        for k in range(horizon):
            actual.append(values[s + k])
            naive.append(values[s - 1])
            if season:
                back = season
                while s + k - back >= s:  # whole seasons back, before the window's start
                    back += season
                seasonal.append(values[s + k - back])
    return np.array(actual), np.array(naive), np.array(seasonal) if season else None


def errors_by_hand(f, a) -> dict:
    f, a = np.asarray(f, dtype=float), np.asarray(a, dtype=float)
    smape = [0.0 if x == y == 0 else abs(x - y) / ((abs(x) + abs(y)) / 2) for x, y in zip(f, a)]
    return {"mae": float(np.mean(np.abs(f - a))), "rmse": math.sqrt(float(np.mean((f - a) ** 2))),
            "smape": 100 * float(np.mean(smape))}


# --------------------------------------------------------------------------- a tiny trained run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("forecast")
    rows = series_rows()
    # Rows in the file out of order: the time column sorts them.
    shuffled = rows[100:] + rows[:100]
    data = write_csv(root / "series.csv", HEADER, shuffled)
    cfg = forecast_config(data, root / "run")
    config = write_config(root, cfg)
    with pytest.raises(SystemExit) as info:
        main(["fit", str(config), "--quiet"])
    assert info.value.code == 0
    run = root / "run"
    values = np.array([[float(r[1]), float(r[2])] for r in rows])  # sorted by time, as the file should be read
    return {"root": root, "data": data, "cfg": cfg, "config": config, "run": run, "rows": rows, "values": values,
            "summary": json.loads((run / "summary.json").read_text()),
            "last": run / "checkpoints" / "last.pt", "best": run / "checkpoints" / "best.pt"}


def test_fit_reports_metrics_next_to_baselines_on_the_same_windows(trained):
    summary, values = trained["summary"], trained["values"]
    assert summary["status"] == "finished"
    n = len(values)
    train_b, val_b, test_b = split_blocks(n, 0.2, 0.2)
    assert (train_b.stop, val_b.stop) == (144, 192)
    for split, block in (("val", val_b), ("test", test_b)):
        # Every val/test window's targets inside its block, starting with the block's first row.
        starts = list(range(block.start, block.stop - H + 1))
        actual, naive, seasonal = naive_reference(values[:, 0], starts, H, S)
        for name, forecast in (("naive", naive), ("seasonal_naive", seasonal)):
            for metric, value in errors_by_hand(forecast, actual).items():
                assert summary["baselines"][f"{split}/{name}_{metric}"] == pytest.approx(value, rel=1e-9)
        for metric in ("loss", "mae", "rmse", "smape"):
            assert math.isfinite(summary["final"][f"{split}/{metric}"])
    # The seasonal pattern is what the seasonal-naive forecast knows and the naive one doesn't.
    assert summary["baselines"]["test/seasonal_naive_mae"] < summary["baselines"]["test/naive_mae"]


def test_checkpoint_holds_the_training_blocks_normalisation(trained):
    payload = load_checkpoint(trained["last"])
    train = trained["values"][:144]
    norm = payload["task_state"]["normalisation"]
    assert norm["columns"] == ["y", "x2"] and norm["n_targets"] == 1
    assert norm["mean"] == pytest.approx(train.mean(axis=0).tolist(), rel=1e-12)
    assert norm["std"] == pytest.approx(train.std(axis=0).tolist(), rel=1e-12)
    # Not the whole series' statistics (the trend makes them differ).
    assert abs(norm["mean"][0] - trained["values"][:, 0].mean()) > 0.3


def test_eval_matches_the_runs_final_metrics_and_baselines(trained, capsys):
    code, out, err = cli(["eval", trained["last"], "--split", "test", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    summary = trained["summary"]
    assert result["windows"] == 48 - H + 1
    for metric in ("loss", "mae", "rmse", "smape"):
        assert result[metric] == pytest.approx(summary["final"][f"test/{metric}"], rel=1e-5)
    for key in ("naive_mae", "naive_rmse", "naive_smape", "seasonal_naive_mae", "seasonal_naive_smape"):
        assert result[key] == pytest.approx(summary["baselines"][f"test/{key}"], rel=1e-9)


def test_eval_on_another_csv_uses_every_window_and_the_stored_normalisation(trained, tmp_path, capsys):
    rows = series_rows(60, seed=5)
    other = write_csv(tmp_path / "other.csv", HEADER, rows)
    code, out, err = cli(["eval", trained["last"], "--data", other, "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    values = np.array([float(r[1]) for r in rows])
    starts = list(range(max(L, S), 60 - H + 1))
    assert result["windows"] == len(starts)
    actual, naive, seasonal = naive_reference(values, starts, H, S)
    assert result["naive_mae"] == pytest.approx(errors_by_hand(naive, actual)["mae"])
    assert result["seasonal_naive_rmse"] == pytest.approx(errors_by_hand(seasonal, actual)["rmse"])
    # The model's MAE by hand: its forecasts with the checkpoint's normalisation, not the new file's.
    opened = open_checkpoint(trained["last"], torch.device("cpu"))
    model = opened.model
    norm = opened.payload["task_state"]["normalisation"]
    mean, std = np.array(norm["mean"]), np.array(norm["std"])
    both = np.array([[float(r[1]), float(r[2])] for r in rows])
    errors = []
    with torch.no_grad():
        for s in starts:
            z = torch.tensor((both[s - L:s] - mean) / std, dtype=torch.float32)
            rel = z.clone()
            rel[:, 0] -= z[-1, 0]
            out_, _ = model(rel[None])
            forecast = (z[-1, 0] + out_[0]).double().numpy() * std[0] + mean[0]
            errors.extend(np.abs(forecast - values[s:s + H]))
    assert result["mae"] == pytest.approx(float(np.mean(errors)), rel=1e-4)


def test_predict_forecasts_the_horizon_after_the_inputs_end(trained, tmp_path, capsys):
    out_file = tmp_path / "forecast.csv"
    code, out, err = cli(["predict", trained["best"], "--input", trained["data"], "--output", out_file], capsys)
    assert code == 0, err
    with open(out_file) as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["1", "2", "3"]
    # The file's last month is 2009-12 (240 months from 1990-01): the next three, in calendar months.
    assert [r["month"] for r in rows] == ["2010-01", "2010-02", "2010-03"]
    assert list(rows[0]) == ["step", "month", "y"]
    # The forecast reads only the last input_len rows: other earlier history, same forecast.
    changed = [list(r) for r in trained["rows"]]
    for r in changed[:-L]:
        r[1] = "0"
    other = write_csv(tmp_path / "changed.csv", HEADER, changed)
    code, out, err = cli(["predict", trained["best"], "--input", other, "--format", "jsonl"], capsys)
    assert code == 0, err
    again = [json.loads(line) for line in out.splitlines()]
    assert [r["y"] for r in again] == pytest.approx([float(r["y"]) for r in rows], rel=1e-6)
    # ... and it is the model's output, denormalised.
    opened = open_checkpoint(trained["best"], torch.device("cpu"))
    model, _ = opened.model, opened.cfg
    norm = opened.payload["task_state"]["normalisation"]
    mean, std = np.array(norm["mean"]), np.array(norm["std"])
    z = torch.tensor((trained["values"][-L:] - mean) / std, dtype=torch.float32)
    rel = z.clone()
    rel[:, 0] -= z[-1, 0]
    with torch.no_grad():
        expected = (z[-1, 0] + model(rel[None])[0][0]).double().numpy() * std[0] + mean[0]
    assert [r["y"] for r in again] == pytest.approx(expected.tolist(), rel=1e-5)


def test_predict_without_a_time_column_gives_steps_only(tmp_path, capsys):
    rows = series_rows(120)
    data = write_csv(tmp_path / "s.csv", HEADER, rows)
    cfg = forecast_config(data, tmp_path / "run", time_column=None, input_columns=[], season=None)
    cfg["train"].update(max_steps=2, eval_every=2, checkpoint_every=2)
    code, _, err = cli(["fit", write_config(tmp_path, cfg), "--quiet"], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert "val/naive_mae" in summary["baselines"]
    assert not any("seasonal" in k for k in summary["baselines"]), "no season, no seasonal-naive baseline"
    code, out, err = cli(["predict", tmp_path / "run" / "checkpoints" / "last.pt", "--input", data], capsys)
    assert code == 0, err
    assert [list(json.loads(line)) for line in out.splitlines()] == [["step", "y"]] * H


def test_several_targets_are_forecast_together(tmp_path, capsys):
    data = write_csv(tmp_path / "s.csv", HEADER, series_rows(120))
    cfg = forecast_config(data, tmp_path / "run", target_columns=["x2", "y"], input_columns=[])
    cfg["train"].update(max_steps=2, eval_every=2, checkpoint_every=2)
    code, _, err = cli(["fit", write_config(tmp_path, cfg), "--quiet"], capsys)
    assert code == 0, err
    checkpoint = tmp_path / "run" / "checkpoints" / "last.pt"
    code, out, err = cli(["predict", checkpoint, "--input", data], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [list(r) for r in rows] == [["step", "month", "x2", "y"]] * H
    # Column j of step k is output k * targets + j, added to target j's last value (normalised).
    opened = open_checkpoint(checkpoint, torch.device("cpu"))
    model, _ = opened.model, opened.cfg
    norm = opened.payload["task_state"]["normalisation"]
    mean, std = np.array(norm["mean"]), np.array(norm["std"])
    last = np.array([[float(r[2]), float(r[1])] for r in series_rows(120)[-L:]])
    z = torch.tensor((last - mean) / std, dtype=torch.float32)
    with torch.no_grad():
        out_, _ = model((z - z[-1])[None])
    expected = (z[-1] + out_[0].view(H, 2)).double().numpy() * std + mean
    assert np.array([[r["x2"], r["y"]] for r in rows]) == pytest.approx(expected, rel=1e-5)


def test_the_shipped_configs_load_their_data():
    for name, rows, windows in (("sunspots", 309, 217 - 30 - 3 + 1), ("co2", 2284, 1598 - 104 - 13 + 1)):
        cfg = validate_config(yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text()))
        cfg.data.path = str(REPO / cfg.data.path)
        task = ForecastTask.from_config(cfg, rows_per_step=cfg.train.batch_size)
        assert len(task.series.values) == rows and len(task.train_starts) == windows
        assert task.has_split("val") and task.has_split("test")
        assert set(task.baselines()) >= {"test/naive_mae", "test/seasonal_naive_mae", "val/seasonal_naive_smape"}


def test_training_beats_the_naive_forecast_on_a_seasonal_series(tmp_path, capsys):
    n = 300
    t = np.arange(n)
    y = 5 + np.sin(2 * np.pi * t / 12) + 0.05 * np.sin(2 * np.pi * t / 7)
    data = write_csv(tmp_path / "sine.csv", ["y"], [[f"{v:.5f}"] for v in y])
    cfg = forecast_config(data, tmp_path / "run", time_column=None, input_columns=[])
    cfg["model"]["hidden_size"] = 16
    cfg["train"].update(max_steps=150, eval_every=150, checkpoint_every=150)
    code, _, err = cli(["fit", write_config(tmp_path, cfg), "--quiet"], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["final"]["test/mae"] < 0.5 * summary["baselines"]["test/naive_mae"]


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(trained, tmp_path, capsys):
    whole = dict(trained["cfg"], run={"dir": str(tmp_path / "whole")})
    whole["train"] = dict(whole["train"], max_steps=6, eval_every=3, checkpoint_every=3)
    whole["optim"] = dict(whole["optim"], schedule="constant")  # the same lr whatever max_steps says
    code, _, err = cli(["fit", write_config(tmp_path, whole, "whole.yaml"), "--quiet"], capsys)
    assert code == 0, err
    part = dict(whole, run={"dir": str(tmp_path / "part")})
    config = write_config(tmp_path, part, "part.yaml")
    assert cli(["fit", config, "train.max_steps=3", "--quiet"], capsys)[0] == 0
    code, _, err = cli(["fit", config, "train.max_steps=6", "--resume", "--quiet"], capsys)
    assert code == 0, err
    a = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "part" / "checkpoints" / "last.pt")
    assert b["trainer"]["step"] == 6
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert a["task_state"]["normalisation"] == b["task_state"]["normalisation"]


def test_a_resumed_run_keeps_the_checkpoints_normalisation(trained):
    cfg = validate_config(trained["cfg"])
    saved = {"normalisation": {"columns": ["y", "x2"], "n_targets": 1, "mean": [1.0, 2.0], "std": [3.0, 4.0]}}
    task = ForecastTask.from_config(cfg, rows_per_step=cfg.train.batch_size, saved={"task_state": saved})
    assert (task.mean, task.std) == ([1.0, 2.0], [3.0, 4.0])
    assert task.norm[0, 0].item() == pytest.approx((trained["values"][0, 0] - 1.0) / 3.0, rel=1e-6)


# --------------------------------------------------------------------------- reading and windows


def test_training_windows_never_reach_held_out_targets(trained):
    cfg = validate_config(trained["cfg"])
    task = ForecastTask.from_config(cfg, rows_per_step=cfg.train.batch_size)
    train_stop = 144
    starts = task.train_starts.numpy()
    assert starts.min() == L and starts.max() + H == train_stop  # every window inside the training block
    assert len(starts) == train_stop - L - H + 1
    assert task.eval_starts("val").tolist() == list(range(144, 192 - H + 1))
    assert task.eval_starts("test").tolist() == list(range(192, 240 - H + 1))
    # A batch is the normalised rows [start - L, start), the target relative to the last of them
    # (the naive anchor) -> targets [start, start + H).
    x, anchor, y = task._make_batch(torch.tensor([0]))
    s = int(starts[0])
    z = (trained["values"] - np.array(task.mean)) / np.array(task.std)
    assert x[0, :, 0].numpy() == pytest.approx(z[s - L:s, 0] - z[s - 1, 0], abs=1e-6)
    assert x[0, :, 1].numpy() == pytest.approx(z[s - L:s, 1], abs=1e-6)
    assert anchor[0, :, 0].numpy() == pytest.approx(np.full(H, z[s - 1, 0]), abs=1e-6)
    assert y[0, :, 0].numpy() == pytest.approx(z[s:s + H, 0], abs=1e-6)


def test_interpolation_is_linear_fills_edges_and_stays_inside_each_block(tmp_path):
    cells = ["", "2", "", "", "8", "10", "", "", "1", "2"]  # rows 0-9; blocks [0,6) [6,8) [8,10)
    path = write_csv(tmp_path / "gaps.csv", ["v"], [[c] for c in cells])
    table = read_series_csv(path, ["v"], None, "interpolate")
    assert table.observed[:, 0].tolist() == [c != "" for c in cells]
    # Row 0 takes the nearest value; rows 2-3 lie on the line from 2 to 8; the val block [6, 8) is blank
    # throughout and must not borrow from its neighbours -> refused.
    with pytest.raises(GrutrainError, match="blank throughout"):
        fill_missing(table, "interpolate", [slice(0, 6), slice(6, 8), slice(8, 10)])
    filled = fill_missing(table, "interpolate", [slice(0, 7), slice(7, 10)])
    assert filled.values[:, 0].tolist() == pytest.approx([2, 2, 4, 6, 8, 10, 10, 1, 1, 2])
    assert not np.isnan(filled.values).any()


def test_interpolated_blanks_stay_in_their_split_and_are_not_scored(tmp_path):
    rows = series_rows()
    values = np.array([float(r[1]) for r in rows])
    for i in (143, 150):  # the training block's last row; a row inside the val block [144, 192)
        rows[i][1] = ""
    data = write_csv(tmp_path / "gaps.csv", HEADER, rows)
    cfg = validate_config(forecast_config(data, tmp_path / "run", missing="interpolate"))
    task = ForecastTask.from_config(cfg, rows_per_step=cfg.train.batch_size)
    # Row 143 takes the training block's nearest value, not a value drawn towards the val block's first row.
    assert task.series.values[143, 0] == values[142]
    assert task.series.values[150, 0] == pytest.approx((values[149] + values[151]) / 2)
    # The normalisation saw only training rows (row 143 as filled).
    train = np.concatenate([values[:143], values[142:143]])
    assert task.mean[0] == pytest.approx(train.mean(), rel=1e-12)
    # Metrics skip the blank target cell: naive MAE over the other cells, by hand.
    errors = [abs(task.series.values[s - 1, 0] - values[s + k]) for s in range(144, 192 - H + 1) for k in range(H)
              if s + k != 150]
    assert task.baselines()["val/naive_mae"] == pytest.approx(float(np.mean(errors)), rel=1e-12)
    # A head that outputs zero forecasts the last value: the model's metrics are then the naive ones,
    # scored on the same cells.
    model = task.build_model()
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)
    metrics = task.evaluate(model, "val", torch.device("cpu"))
    for name in ("mae", "rmse", "smape"):
        assert metrics[name] == pytest.approx(task.baselines()[f"val/naive_{name}"], rel=1e-5)


def test_co2_has_59_blanks_that_interpolate_fills(tmp_path):
    with open(REPO / "data" / "co2.csv") as f:
        raw = list(csv.reader(f))[1:]
    blank_lines = [i + 2 for i, r in enumerate(raw) if r[1] == ""]
    assert len(blank_lines) == 59
    cfg = validate_config(yaml.safe_load((REPO / "configs" / "co2.yaml").read_text())).data
    cfg = cfg.model_copy(update={"path": str(REPO / "data" / "co2.csv")})
    table, blocks = load_series(cfg)
    assert len(table) == len(raw) and int((~table.observed).sum()) == 59
    assert not np.isnan(table.values).any()
    # Observed cells are the file's values, unchanged.
    observed = np.array([float(r[1]) for r in raw if r[1] != ""])
    assert table.values[table.observed[:, 0], 0] == pytest.approx(observed)
    dropped, _ = load_series(cfg.model_copy(update={"missing": "drop"}))
    assert len(dropped) == len(raw) - 59
    with pytest.raises(GrutrainError) as info:
        load_series(cfg.model_copy(update={"missing": "error"}))
    message = str(info.value)
    assert "'co2'" in message and "59 blank" in message
    assert f"lines {blank_lines[0]}, {blank_lines[1]}, {blank_lines[2]}" in message


def test_time_axes_sort_and_step(tmp_path):
    weekly = TimeAxis.candidates("19580329")[0]
    times = [weekly.parse(t) for t in ("20011215", "20011222", "20011229")]
    assert weekly.next_values(times, 2) == [20020105, 20020112]
    years = TimeAxis("number", integral=True)
    assert years.next_values([2006.0, 2007.0, 2008.0], 2) == [2009, 2010]
    tenths = TimeAxis("number")
    assert tenths.next_values([0.1, 0.2, 0.3], 2) == [0.4, 0.5]
    month_ends = TimeAxis("date", "%Y-%m-%d")
    ends = [month_ends.parse(t) for t in ("2020-01-31", "2020-03-31", "2020-05-31")]
    assert month_ends.next_values(ends, 1) == ["2020-07-31"]
    # An unsorted file is read in time order; a repeated time is refused.
    path = write_csv(tmp_path / "t.csv", ["when", "v"], [["2001-03", 3], ["2001-01", 1], ["2001-02", 2]])
    table = read_series_csv(path, ["v"], "when", "error")
    assert table.values[:, 0].tolist() == [1, 2, 3] and table.lines.tolist() == [3, 4, 2]
    assert [t.month for t in table.times] == [1, 2, 3]
    assert table.times[0].date() == date(2001, 1, 1)


def test_errors_and_naive_forecasts_by_hand():
    forecast = np.array([1.0, 0.0, 3.0, -2.0])
    actual = np.array([2.0, 0.0, 1.0, 2.0])
    got = forecast_errors(forecast, actual)
    # |err| = 1, 0, 2, 4; sMAPE terms 1/1.5, 0 (both zero), 2/2, 4/2
    assert got["mae"] == pytest.approx(7 / 4)
    assert got["rmse"] == pytest.approx(math.sqrt(21 / 4))
    assert got["smape"] == pytest.approx(100 * (1 / 1.5 + 0 + 1 + 2) / 4)
    for factor in (1e300, 1e-300):  # the squares of such errors overflow (underflow) in float64
        scaled = forecast_errors(forecast * factor, actual * factor)
        assert scaled["rmse"] == pytest.approx(math.sqrt(21 / 4) * factor, rel=1e-12)
    mask = np.array([True, False, True, False])
    assert forecast_errors(forecast, actual, mask)["mae"] == pytest.approx(1.5)
    values = np.arange(30, dtype=float)[:, None] ** 2
    starts = np.array([10, 20])
    assert naive_forecast(values, starts, 2, 1)[:, :, 0].tolist() == [[81, 81], [361, 361]]
    # horizon 5 > season 3: steps 3 and 4 look two seasons back, never past the start.
    seasonal = seasonal_naive_forecast(values, starts, 5, 1, 3)[:, :, 0]
    assert seasonal.tolist() == [[v ** 2 for v in (7, 8, 9, 7, 8)], [v ** 2 for v in (17, 18, 19, 17, 18)]]
    assert window_starts(10, 20, 4, 3).tolist() == list(range(10, 18))
    assert window_starts(0, 20, 4, 3, history=6).tolist() == list(range(6, 18))


# --------------------------------------------------------------------------- bad input: exit 1, one line


@pytest.fixture
def fit_with(tmp_path, capsys):
    runs = iter(range(100))

    def run(rows, header=HEADER, raw: str | None = None, **data):
        path = tmp_path / "bad.csv"
        if raw is not None:
            path.write_text(raw)
        else:
            write_csv(path, header, rows)
        cfg = forecast_config(path, tmp_path / f"run{next(runs)}", **data)
        return cli(["fit", write_config(tmp_path, cfg), "--quiet"], capsys)

    return run


def test_a_non_numeric_cell_names_its_column_and_line(fit_with, tmp_path):
    rows = series_rows()
    rows[41][1] = "12,5"
    assert_one_line_error(fit_with(rows), "line 43", "column 'y'", "'12,5' is not a number")
    assert not (tmp_path / "run0").exists(), "bad input leaves no run directory"


def test_too_few_rows_for_one_window_says_how_many(fit_with):
    assert_one_line_error(fit_with(series_rows(10)), "10 rows", f"needs {L + H}")
    # Enough rows for one window, but not once val and test are held out.
    assert_one_line_error(fit_with(series_rows(20)), "training block has 12", f"{L + H}")


def test_a_column_not_in_the_csv_lists_the_columns_present(fit_with):
    present = "the columns present are month, y, x2, comment"
    assert_one_line_error(fit_with(series_rows(), target_columns=["sales"]), "no column 'sales'", present)
    assert_one_line_error(fit_with(series_rows(), input_columns=["temp", "x2"]), "no column 'temp'", present)
    assert_one_line_error(fit_with(series_rows(), time_column="date"), "no column 'date'", present)


def test_an_empty_csv_or_a_header_alone_is_refused(fit_with):
    assert_one_line_error(fit_with([], raw=""), "is empty")
    assert_one_line_error(fit_with([], raw="month,y,x2,comment\n"), "no data rows")


def test_blanks_with_missing_error_name_the_column_and_lines(fit_with):
    rows = series_rows()
    for i in (30, 31, 90):
        rows[i][2] = ""
    assert_one_line_error(fit_with(rows), "column 'x2'", "3 blank cells", "lines 32, 33, 92",
                                 "data.missing=interpolate")
    # The same file trains with interpolate or drop.
    for missing in ("interpolate", "drop"):
        code, _, err = fit_with(rows, missing=missing)
        assert code == 0, err


def test_bad_time_columns_are_refused(fit_with):
    rows = series_rows()
    rows[7][0] = rows[6][0]
    assert_one_line_error(fit_with(rows), f"the time {rows[6][0]!r} appears twice", "lines 8 and 9")
    rows = series_rows()
    rows[5][0] = "sometime"
    assert_one_line_error(fit_with(rows), "line 7", "'sometime' is not a date YYYY-MM")


@pytest.fixture
def predict_with(trained, tmp_path, capsys):
    def run(rows, header=HEADER):
        path = write_csv(tmp_path / "input.csv", header, rows)
        return cli(["predict", trained["best"], "--input", path], capsys)

    return run


def test_predict_input_with_missing_columns_is_refused(predict_with):
    rows = [[r[0], r[1]] for r in series_rows(30)]
    assert_one_line_error(predict_with(rows, header=["month", "y"]), "no column 'x2'",
                          "the columns present are month, y")


def test_predict_input_shorter_than_input_len_is_refused(predict_with):
    assert_one_line_error(predict_with(series_rows(L - 1)), f"{L - 1} rows", f"at least {L}", "data.input_len")


def test_eval_data_too_short_for_a_window_is_refused(trained, tmp_path, capsys):
    path = write_csv(tmp_path / "short.csv", HEADER, series_rows(S + H - 1))
    assert_one_line_error(cli(["eval", trained["best"], "--data", path, "--json"], capsys),
                          f"{S + H - 1} rows", f"needs {S + H}")
