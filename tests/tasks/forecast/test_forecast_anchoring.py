"""Forecasting against strong baselines: calendar inputs from each accepted time format, seasonal
anchoring, MASE, the pinball loss and interval coverage, against computations by hand."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import torch

from grutrain.tasks import validate_config
from grutrain.tasks.forecast import calendar as cal
from grutrain.tasks.forecast.windows import (WindowLayout, add_anchor, choose_anchor_lag, make_inputs,
                                            seasonal_naive_baselines)
from grutrain.data.timeseries import TimeAxis
from grutrain.errors import GrutrainError
from grutrain.tasks.forecast.metrics import interval_coverage, mae_by_step, mase, pinball_loss, seasonal_scale
from grutrain.tasks.forecast.task import ForecastTask


def parse(cells):
    axis = TimeAxis.candidates(cells[0])[0]
    return axis, [axis.parse(c) for c in cells]


# --------------------------------------------------------------------------- calendar inputs


@pytest.mark.parametrize("cells", [
    ["2021-06-07 17:30", "2021-06-07 18:00"],                       # YYYY-MM-DD HH:MM
    ["2021-06-07T17:30:00", "2021-06-07T18:00:00"],                 # ISO
    ["2021-06-07T17:30:00+02:00", "2021-06-07T18:00:00+02:00"],     # ISO with an offset
])
def test_calendar_features_from_each_date_format(cells):
    axis, times = parse(cells)
    when = cal.as_datetimes(times, axis.kind, False, "t.csv")
    feats = cal.calendar_features(when, ["minute_of_hour", "hour_of_day", "day_of_week", "day_of_year"])
    # 2021-06-07 is a Monday, day 158 of 2021; 17:30 on the wall clock whatever the offset.
    day = 17.5 / 24
    expected = [30 / 60, day, (0 + day) / 7, (157 + day) / 365]
    for c, fraction in enumerate(expected):
        assert feats[0, 2 * c] == pytest.approx(np.sin(2 * np.pi * fraction), abs=1e-6)
        assert feats[0, 2 * c + 1] == pytest.approx(np.cos(2 * np.pi * fraction), abs=1e-6)


def test_calendar_features_from_epoch_seconds_are_utc():
    stamp = datetime(2021, 6, 7, 17, 30, tzinfo=timezone.utc).timestamp()
    axis, times = parse([str(int(stamp)), str(int(stamp) + 1800)])
    assert axis.kind == "number"
    with pytest.raises(GrutrainError, match="data.calendar=epoch_seconds"):
        cal.as_datetimes(times, axis.kind, False, "t.csv")
    when = cal.as_datetimes(times, axis.kind, True, "t.csv")
    feats = cal.calendar_features(when, ["hour_of_day"])
    assert feats[0, 0] == pytest.approx(np.sin(2 * np.pi * 17.5 / 24), abs=1e-6)


def test_calendar_follows_the_wall_clock_across_a_daylight_saving_change_and_a_gap():
    # Europe/Berlin, 2021-03-28: 02:00 CET jumps to 03:00 CEST. Half-hourly rows with offsets, and a gap
    # (04:00 and 04:30 missing) after the change.
    cells = ["2021-03-28T01:00:00+01:00", "2021-03-28T01:30:00+01:00", "2021-03-28T03:00:00+02:00",
             "2021-03-28T03:30:00+02:00", "2021-03-28T05:00:00+02:00"]
    axis, times = parse(cells)
    when = cal.as_datetimes(times, axis.kind, False, "t.csv")
    # In absolute time the rows are 30 minutes apart across the change, 90 minutes across the gap.
    assert [(b - a).total_seconds() for a, b in zip(when[:-1], when[1:])] == [1800, 1800, 1800, 5400]
    feats = cal.calendar_features(when, ["hour_of_day"])
    hours = [1.0, 1.5, 3.0, 3.5, 5.0]  # the wall clock, as written
    assert feats[:, 0] == pytest.approx(np.sin(2 * np.pi * np.array(hours) / 24), abs=1e-6)
    assert feats[:, 1] == pytest.approx(np.cos(2 * np.pi * np.array(hours) / 24), abs=1e-6)


def test_cycles_need_rows_closer_than_a_cycle_and_two_cycles_of_data():
    start = datetime(2000, 6, 5)
    half_hourly = [start + timedelta(minutes=30 * i) for i in range(48 * 7 * 12)]  # 12 weeks
    assert cal.choose_cycles(half_hourly) == ["minute_of_hour", "hour_of_day", "day_of_week"]
    weekly = [start + timedelta(days=7 * i) for i in range(52 * 3)]  # 3 years
    assert cal.choose_cycles(weekly) == ["day_of_year"]


# --------------------------------------------------------------------------- seasonal anchoring


def test_seasonal_anchor_with_a_zero_model_is_the_seasonal_naive_forecast():
    rng = np.random.default_rng(0)
    values = rng.standard_normal((200, 2))  # a target and a past-only input
    mean, std = values.mean(0), values.std(0)
    norm = torch.from_numpy((values - mean) / std).float()
    layout = WindowLayout(input_len=6, horizon=10, n_targets=1, n_past=1, anchor_lag=4, seasons=(4,))
    starts = torch.arange(layout.history, 150)
    x, anchor = make_inputs(norm, torch.zeros(200, 0), starts, layout)
    assert x.shape == (len(starts), 6, layout.n_inputs)
    zero = torch.zeros(len(starts), layout.n_outputs)
    forecast = add_anchor(zero, anchor, layout)[..., 0].double().numpy() * std[0] + mean[0]
    by_hand = np.array([[values[s + k - 4 * (k // 4 + 1), 0] for k in range(10)] for s in starts.tolist()])
    assert forecast[..., 0] == pytest.approx(by_hand, abs=1e-5)
    assert seasonal_naive_baselines(values, starts.numpy(), 10, 1, [4])["seasonal_naive"][..., 0] == \
        pytest.approx(by_hand)


def test_the_anchor_is_the_baseline_with_the_lowest_in_sample_error():
    t = np.arange(600)
    weekly = (10 * np.sin(2 * np.pi * t / 48) + 5 * (t % 336 < 240))[:, None]
    assert choose_anchor_lag(weekly, [48, 336], "auto") == 336
    assert choose_anchor_lag(weekly, [48, 336], "naive") == 1
    trend = (0.1 * t)[:, None]
    assert choose_anchor_lag(trend, [48, 336], "auto") == 1
    assert choose_anchor_lag(trend, [48, 336], "seasonal") == 48


# --------------------------------------------------------------------------- metrics by hand


def test_mase_against_a_hand_computed_example():
    train = np.array([[1.0], [3.0], [2.0], [6.0]])  # lag 2: |2-1|, |6-3| -> scale 2
    assert seasonal_scale(train, 2) == pytest.approx([2.0])
    forecast = np.array([[[5.0], [7.0]]])
    actual = np.array([[[6.0], [4.0]]])  # errors 1 and 3: MAE 2
    mask = np.ones_like(actual, dtype=bool)
    assert mase(forecast, actual, mask, np.array([2.0])) == pytest.approx(1.0)
    assert mae_by_step(forecast, actual, mask) == pytest.approx([1.0, 3.0])


def test_pinball_loss_against_a_hand_computed_example():
    # actual 10; quantile forecasts 8 (q 0.1), 10 (q 0.5), 13 (q 0.9):
    # q 0.1: u = 2 -> 0.1 * 2 = 0.2;  q 0.5: 0;  q 0.9: u = -3 -> 0.1 * 3 = 0.3  -> mean 0.5 / 3
    expected = 0.5 / 3
    assert pinball_loss(np.array([[8.0, 10.0, 13.0]]), np.array([10.0]), [0.1, 0.5, 0.9]) == pytest.approx(expected)
    torch_loss = pinball_loss(torch.tensor([[8.0, 10.0, 13.0]]), torch.tensor([10.0]), [0.1, 0.5, 0.9])
    assert float(torch_loss) == pytest.approx(expected)


def test_interval_coverage_counts_the_actuals_inside():
    lower, upper = np.array([0.0, 0.0, 0.0, 0.0]), np.array([1.0, 1.0, 1.0, 1.0])
    actual = np.array([0.5, 1.0, 2.0, -1.0])
    assert interval_coverage(lower, upper, actual, np.ones(4, bool)) == pytest.approx(0.5)


# --------------------------------------------------------------------------- the task end to end


def demand_csv(path, weeks=8, step_minutes=60):
    start = datetime(2000, 6, 5)
    n = weeks * 7 * 24 * 60 // step_minutes
    rng = np.random.default_rng(1)
    rows = ["time,demand"]
    for i in range(n):
        when = start + timedelta(minutes=step_minutes * i)
        value = 100 + 20 * np.sin(2 * np.pi * when.hour / 24) - 15 * (when.weekday() >= 5) + rng.normal()
        rows.append(f"{when:%Y-%m-%d %H:%M},{value:.3f}")
    path.write_text("\n".join(rows) + "\n")
    return path


def task_config(path, **data):
    return validate_config({
        "task": "forecast",
        "data": {"path": str(path), "target_columns": ["demand"], "time_column": "time", "input_len": 24,
                 "horizon": 24, "season": [24, 168], **data},
        "model": {"hidden_size": 8}, "train": {"max_steps": 2, "batch_size": 8, "device": "cpu"},
    })


def test_the_task_anchors_on_the_weekly_season_and_normalises_on_training_rows_only(tmp_path):
    path = demand_csv(tmp_path / "d.csv")
    task = ForecastTask.from_config(task_config(path, quantiles=[0.1, 0.5, 0.9]), rows_per_step=8)
    assert task.layout.anchor_lag == 168
    assert task.cycles == ["hour_of_day", "day_of_week"]
    train = task.values[: task.blocks["val"].start, 0]
    assert task.mean[0] == pytest.approx(train.mean()) and task.std[0] == pytest.approx(train.std())
    # The untrained model (zero head) forecasts exactly the weekly seasonal naive, every quantile.
    model = task.build_model()
    starts = task.eval_starts("test")
    forecast = task.series.forecast(model, starts, torch.device("cpu"))
    weekly = seasonal_naive_baselines(task.values, starts, 24, 1, [24, 168])["seasonal_naive_168"]
    for q in range(3):
        assert forecast[..., q] == pytest.approx(weekly, rel=1e-5)
    metrics = task.evaluate(model, "test", torch.device("cpu"))
    assert metrics["mae_vs_baseline"] == pytest.approx(1.0, rel=1e-5)
    assert {"pinball", "coverage_80", "mase"} <= metrics.keys()


def test_quantiles_must_include_the_median():
    with pytest.raises(GrutrainError, match="include 0.5"):
        task_config("x.csv", quantiles=[0.1, 0.9])
