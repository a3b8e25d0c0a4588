"""Many series, one model (data.id_column): per-series normalisation and splits, metrics and
predictions per series, and bad long-format input refused with exit 1 and one line."""

from __future__ import annotations

import csv
import json
from datetime import date, timedelta

import numpy as np
import pytest
import yaml

from grutrain.tasks import validate_config
from grutrain.tasks.forecast.task import ForecastTask
from test_forecast import assert_one_line_error, cli

L, H = 8, 2


def panel_rows(lengths=None, seed=0):
    """Weekly rows of three series with different levels and lengths: (id, date, value)."""
    rng = np.random.default_rng(seed)
    lengths = lengths or {"a": 80, "b": 60, "c": 70}
    rows = []
    for k, (name, n) in enumerate(lengths.items()):
        start = date(2000, 1, 3) + timedelta(weeks=k)  # different start dates: ragged in time
        t = np.arange(n)
        y = 100 * (k + 1) + 10 * np.sin(2 * np.pi * t / 4) + rng.standard_normal(n)
        rows += [[name, (start + timedelta(weeks=int(i))).isoformat(), f"{v:.3f}"] for i, v in zip(t, y)]
    rng.shuffle(rows)  # long format: any row order
    return rows


def write(tmp_path, rows, name="panel.csv"):
    path = tmp_path / name
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "week", "value"])
        writer.writerows(rows)
    return path


def config(path, run_dir=None, **data):
    return {
        "task": "forecast",
        "data": {"path": str(path), "id_column": "id", "target_columns": ["value"], "time_column": "week",
                 "input_len": L, "horizon": H, "season": 4, "calendar": "none", "val_fraction": 0.2,
                 "test_fraction": 0.2, **data},
        "model": {"hidden_size": 8},
        "train": {"max_steps": 6, "batch_size": 16, "eval_every": 3, "checkpoint_every": 3, "log_every": 3,
                  "device": "cpu", "threads": 1},
        "run": {"dir": str(run_dir or path.parent / "run"), "name": "panel"},
    }


def test_each_series_is_normalised_by_its_own_training_rows_and_split_by_its_own_time(tmp_path):
    rows = panel_rows()
    # Series b's test block holds wild values: they must not move its normalisation.
    b_rows = sorted((r for r in rows if r[0] == "b"), key=lambda r: r[1])
    for r in b_rows[-12:]:
        r[2] = "100000"
    task = ForecastTask.from_config(validate_config(config(write(tmp_path, rows))), rows_per_step=16)
    assert task.ids == ["a", "b", "c"]
    for name, table, (train_b, val_b, test_b), (mean, std) in zip(task.ids, task.panel.tables, task.panel.blocks,
                                                                 task.series_norm):
        n = {"a": 80, "b": 60, "c": 70}[name]
        assert len(table) == n and test_b.stop == n and test_b.stop - test_b.start == round(0.2 * n)
        train = table.values[train_b, 0]
        assert mean[0] == pytest.approx(train.mean()) and std[0] == pytest.approx(train.std())
        assert np.all(np.diff([t.toordinal() for t in table.times]) == 7)  # sorted by time within the series
    assert task.series_norm[1][0][0] < 1000  # b's mean: its training rows only
    # Every window lies inside one series' block; the training windows never reach held-out rows.
    offsets = task.panel.offsets
    splits = [("train", task.train_starts.numpy())] + [(split, task.eval_starts(split)) for split in ("val", "test")]
    for split, starts in splits:
        for s in starts:
            k = int(np.searchsorted(offsets, s, side="right") - 1)
            block = dict(zip(("train", "val", "test"), task.panel.blocks[k]))[split]
            assert block.start <= s - offsets[k] and s - offsets[k] + H <= block.stop


def test_fit_eval_and_predict_per_series(tmp_path, capsys):
    path = write(tmp_path, panel_rows())
    cfg_path = tmp_path / "panel.yaml"
    cfg_path.write_text(yaml.safe_dump(config(path, quantiles=[0.1, 0.5, 0.9])))
    code, out, err = cli(["fit", cfg_path], capsys)
    assert code == 0, err
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    code, out, err = cli(["eval", best, "--split", "test", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert set(result["per_series"]) == {"a", "b", "c"}
    assert sum(s["windows"] for s in result["per_series"].values()) == result["windows"]
    assert len(result["mae_by_step"]) == H and "coverage_80" in result and "mase" in result
    code, out, err = cli(["predict", best, "--input", path, "--format", "jsonl"], capsys)
    assert code == 0, err
    predictions = [json.loads(line) for line in out.splitlines()]
    assert [p["id"] for p in predictions] == ["a", "a", "b", "b", "c", "c"]
    assert all(p["value_q0.1"] <= p["value"] <= p["value_q0.9"] for p in predictions)
    # b's next weeks follow b's last week, on b's scale (around 200, not 100 or 300)
    last_b = max(r[1] for r in panel_rows() if r[0] == "b")
    assert predictions[2]["week"] == (date.fromisoformat(last_b) + timedelta(weeks=1)).isoformat()
    assert 150 < predictions[2]["value"] < 250
    # eval --data on a file where one series is too short for a window: the others scored, one line says so
    rows = panel_rows()
    short = write(tmp_path, [r for r in rows if r[0] != "b"] + sorted(r for r in rows if r[0] == "b")[:5], "short.csv")
    code, out, err = cli(["eval", best, "--data", short, "--json"], capsys)
    assert code == 0, err
    assert set(json.loads(out)["per_series"]) == {"a", "c"}
    assert err.strip() == f"note: {short}: 1 series shorter than one window ({L + 4 + H} rows) not scored: 'b' (5)"


def test_a_duplicated_id_and_time_is_refused(tmp_path, capsys):
    rows = panel_rows()
    rows.append(list(next(r for r in rows if r[0] == "c")))
    cfg_path = tmp_path / "p.yaml"
    cfg_path.write_text(yaml.safe_dump(config(write(tmp_path, rows))))
    assert_one_line_error(cli(["fit", cfg_path], capsys), "appears twice for id 'c'")


def test_a_blank_id_is_refused(tmp_path, capsys):
    rows = panel_rows()
    rows[5][0] = ""
    cfg_path = tmp_path / "p.yaml"
    cfg_path.write_text(yaml.safe_dump(config(write(tmp_path, rows))))
    assert_one_line_error(cli(["fit", cfg_path], capsys), "id column 'id' is blank")


def test_ragged_rows_are_refused(tmp_path, capsys):
    path = write(tmp_path, panel_rows())
    with open(path, "a") as f:
        f.write("a,2010-01-04\n")  # a row without its value
    cfg_path = tmp_path / "p.yaml"
    cfg_path.write_text(yaml.safe_dump(config(path)))
    assert_one_line_error(cli(["fit", cfg_path], capsys), "2 fields, but the header has 3")


def test_a_series_shorter_than_one_window_is_refused(tmp_path, capsys):
    cfg_path = tmp_path / "p.yaml"
    cfg_path.write_text(yaml.safe_dump(config(write(tmp_path, panel_rows({"a": 80, "short": 7})))))
    assert_one_line_error(cli(["fit", cfg_path], capsys), "series 'short'", "has 7 rows")


def test_predict_refuses_a_series_the_model_never_saw(tmp_path, capsys):
    path = write(tmp_path, panel_rows())
    cfg_path = tmp_path / "p.yaml"
    cfg_path.write_text(yaml.safe_dump(config(path)))
    assert cli(["fit", cfg_path], capsys)[0] == 0
    other = write(tmp_path, panel_rows({"zz": 40}), "other.csv")
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    assert_one_line_error(cli(["predict", best, "--input", other], capsys), "series 'zz' was not in the training data")
