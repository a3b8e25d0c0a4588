"""data.season: auto on sub-daily, daily and integer-indexed series; an explicit list wins; the
seasons found are stored in the checkpoint's layout."""

from __future__ import annotations

import csv
from datetime import datetime, timedelta

import numpy as np
import pytest

from grutrain.tasks import validate_config
from grutrain.tasks.forecast.seasons import from_acf
from grutrain.tasks.forecast.task import ForecastTask


def write_series(tmp_path, times, values):
    path = tmp_path / "s.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["t", "y"])
        writer.writerows(zip(times, (f"{v:.4f}" for v in values)))
    return path


def task_for(path, season="auto", **data):
    cfg = {"task": "forecast",
           "data": {"path": str(path), "target_columns": ["y"], "time_column": "t", "input_len": 8, "horizon": 2,
                    "season": season, "calendar": "none", **data},
           "model": {"hidden_size": 4}, "train": {"max_steps": 1, "device": "cpu", "threads": 1}}
    return ForecastTask.from_config(validate_config(cfg), rows_per_step=8)


def test_half_hourly_dates_give_a_day_and_a_week(tmp_path, capsys):
    start = datetime(2000, 6, 5)
    times = [(start + timedelta(minutes=30 * i)).strftime("%Y-%m-%d %H:%M") for i in range(48 * 7 * 6)]
    values = np.sin(2 * np.pi * np.arange(len(times)) / 48) + 10
    task = task_for(write_series(tmp_path, times, values))
    assert task.layout.seasons == (48, 336)
    assert "data.season: auto -> [48, 336]" in capsys.readouterr().err
    assert task.state()["forecast_layout"]["seasons"] == [48, 336]  # in the checkpoint


def test_daily_dates_give_a_week_and_a_year_when_the_training_rows_hold_two(tmp_path):
    start = datetime(2000, 1, 3)
    long = [(start + timedelta(days=i)).strftime("%Y-%m-%d") for i in range(1100)]
    assert task_for(write_series(tmp_path, long, np.arange(1100) % 7 + 1.0)).layout.seasons == (7, 365)
    short = long[:200]  # a year does not repeat in 140 training rows: the week alone
    assert task_for(write_series(tmp_path, short, np.arange(200) % 7 + 1.0)).layout.seasons == (7,)


def test_integer_times_take_the_autocorrelation_peak(tmp_path):
    rng = np.random.default_rng(0)
    t = np.arange(300)
    values = 5 * np.sin(2 * np.pi * t / 11) + 0.05 * t + rng.normal(0, 0.5, 300)  # a cycle of 11 on a trend
    task = task_for(write_series(tmp_path, t, values))
    assert task.layout.seasons == (11,)
    noise = rng.normal(size=300).cumsum()  # a random walk: no season
    assert task_for(write_series(tmp_path, t, noise)).layout.seasons == ()


def test_an_explicit_season_wins(tmp_path):
    t = np.arange(300)
    task = task_for(write_series(tmp_path, t, np.sin(2 * np.pi * t / 11)), season=[5])
    assert task.layout.seasons == (5,)


@pytest.mark.parametrize("period", [4, 12])
def test_the_acf_over_several_short_series(period):
    rng = np.random.default_rng(period)
    parts = [100 + 10 * np.sin(2 * np.pi * np.arange(n) / period) + rng.normal(0, 1, n) for n in (20, 40, 60)]
    assert from_acf(parts) == [period]
