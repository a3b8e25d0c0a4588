"""The competition protocol (data.val_rows, data.test_rows): the last rows of every series held out,
short series padded, MASE/sMAPE/MAPE averaged per series as the Tourism and M4 tables are."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from grutrain.tasks import validate_config
from grutrain.tasks.forecast.metrics import percentage_errors, series_average
from grutrain.tasks.forecast.task import ForecastTask
from test_forecast import cli
from test_forecast_panel import config, panel_rows, write

H = 2


def protocol_task(tmp_path, lengths, **data):
    cfg = config(write(tmp_path, panel_rows(lengths)), **{"val_rows": 3, "test_rows": H, **data})
    return ForecastTask.from_config(validate_config(cfg), rows_per_step=16)


def test_the_last_rows_of_every_series_are_held_out_and_never_reach_training_or_scaling(tmp_path):
    # "tiny" has 12 rows: 7 training rows, fewer than one window (8 inputs + a season + 2 targets) needs.
    rows = panel_rows({"a": 60, "tiny": 12})
    tiny = sorted((r for r in rows if r[0] == "tiny"), key=lambda r: r[1])
    for r in tiny[-(3 + H):]:
        r[2] = "100000"  # wild held-out values must move nothing
    cfg = config(write(tmp_path, rows), val_rows=3, test_rows=H)
    task = ForecastTask.from_config(validate_config(cfg), rows_per_step=16)
    offsets = task.panel.offsets
    for k, (table, (train_b, val_b, test_b)) in enumerate(zip(task.panel.tables, task.panel.blocks)):
        assert test_b.stop == len(table) and test_b.stop - test_b.start == H and val_b.stop - val_b.start == 3
        assert table.observed[train_b.start:].all() and not table.observed[:train_b.start].any()  # padding
        assert task.eval_starts("test")[k] == offsets[k] + test_b.start  # one test window, the last H rows
    pad = task.panel.blocks[1][0].start
    assert pad > 0 and task.panel.blocks[1][0].stop - pad == 12 - 3 - H
    mean, std = task.series_norm[1]
    real = np.array([float(r[2]) for r in tiny[:12 - 3 - H]])
    assert mean[0] == pytest.approx(real.mean()) and std[0] == pytest.approx(real.std())
    # Training targets: real training rows only (never padding, never val or test rows).
    for s in task.train_starts.numpy():
        k = int(np.searchsorted(offsets, s, side="right") - 1)
        train_b = task.panel.blocks[k][0]
        assert train_b.start <= s - offsets[k] and s - offsets[k] + H <= train_b.stop
    # Test MASE scale: the rows before the test block; val's: the training rows.
    before_test = np.array([float(r[2]) for r in tiny[:12 - H]])
    assert task.several["mase_scale_test"][1][0] == pytest.approx(np.abs(before_test[4:] - before_test[:-4]).mean())
    assert task.several["mase_scale"][1][0] == pytest.approx(np.abs(real[4:] - real[:-4]).mean())


@pytest.mark.parametrize("partners,blank", [({}, False), ({"theta_weight": 0.3, "mstl_weight": 0.3}, False),
                                             ({"theta_weight": 0.3, "mstl_weight": 0.3, "missing": "interpolate"}, True)])
def test_predict_pads_a_short_series_as_fit_did_and_forecasts_what_eval_scored(tmp_path, capsys, partners, blank):
    # "tiny": 10 rows before its test block, fewer than the 12 the model reads (8 inputs + a season); a blank
    # cell, interpolated for the network, is left out of the classical partners' history by both commands
    rows = panel_rows({"a": 60, "tiny": 12})
    if blank:
        sorted((r for r in rows if r[0] == "a"), key=lambda r: r[1])[40][2] = ""
    cfg = config(write(tmp_path, rows), val_rows=3, test_rows=H, quantiles=[0.1, 0.5, 0.9], **partners)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    assert cli(["fit", tmp_path / "p.yaml"], capsys)[0] == 0
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    code, out, err = cli(["eval", best, "--split", "test", "--json"], capsys)
    assert code == 0, err
    scored = json.loads(out)["per_series"]
    by_series = {name: sorted((r for r in rows if r[0] == name), key=lambda r: r[1]) for name in ("a", "tiny")}
    before_test = write(tmp_path, [r for series in by_series.values() for r in series[:-H]], "before.csv")
    code, out, err = cli(["predict", best, "--input", before_test, "--format", "jsonl"], capsys)
    assert code == 0, err
    predicted = [json.loads(line) for line in out.splitlines()]
    for name, series in by_series.items():
        forecast = [p["value"] for p in predicted if p["id"] == name]
        actual = [float(r[2]) for r in series[-H:]]
        assert np.mean(np.abs(np.subtract(forecast, actual))) == pytest.approx(scored[name]["mae"], abs=1e-4)  # 7 digits


def test_test_rows_zero_trains_on_everything_but_the_validation_block(tmp_path):
    task = protocol_task(tmp_path, {"a": 40, "b": 30}, test_rows=0)
    for table, (train_b, val_b, test_b) in zip(task.panel.tables, task.panel.blocks):
        assert test_b.start == test_b.stop == len(table) and val_b.stop - val_b.start == 3
    assert not task.has_split("test") and task.has_split("val")


def test_a_training_block_within_one_season_is_refused(tmp_path):
    with pytest.raises(Exception, match="more than one season.*lower data.val_rows/data.test_rows"):
        protocol_task(tmp_path, {"a": 40, "b": 8})  # 3 training rows, season 4


@pytest.mark.parametrize("lengths,data,told", [
    # padded at the front, but 15 real training rows cannot hold 20 targets
    ({"a": 55, "b": 50}, {"horizon": 20, "val_rows": 20, "test_rows": 20},
     "data.horizon=20 target rows in the training block after 12 rows of history (data.input_len, and one anchor "
     "season); the longest training block (series 'a') has 15 rows, 17 before it; lower data.horizon"),
    # 14 weeks of profile: 56 rows of history, more than any training block holds
    ({"a": 60, "b": 60}, {"anchor": "profile", "profile_periods": 14},
     "after 56 rows of history (data.input_len, and one anchor season); the longest training block (series 'a') has "
     "55 rows, 0 before it; lower data.horizon or data.input_len, set data.anchor=naive"),
])
def test_no_training_window_says_what_a_window_needs_and_what_the_longest_block_has(tmp_path, lengths, data, told):
    with pytest.raises(Exception, match="^no training window: a window needs") as raised:
        protocol_task(tmp_path, lengths, **data)
    assert told in str(raised.value)


def test_a_training_block_shorter_than_a_window_names_the_keys_in_use(tmp_path):
    with pytest.raises(Exception, match="lower data.val_rows/data.test_rows, data.input_len or data.horizon"):
        protocol_task(tmp_path, {"a": 40, "b": 30}, test_rows=30)
    cfg = config(write(tmp_path, panel_rows({"a": 40, "b": 12})), val_fraction=0.3, test_fraction=0.3)
    with pytest.raises(Exception, match="lower data.val_fraction/data.test_fraction, data.input_len or data.horizon"):
        ForecastTask.from_config(validate_config(cfg), rows_per_step=16)


def test_metrics_are_averaged_per_series_then_over_series():
    # Series 0 has three windows with sMAPE 0, series 1 one window with sMAPE 200/3: the mean over
    # series is 100/3, the mean over windows would be 50/3.
    actual = np.ones((4, 1, 1))
    forecast = np.array([1.0, 1.0, 1.0, 2.0]).reshape(4, 1, 1)
    smape, mape = percentage_errors(forecast, actual)
    groups = np.array([0, 0, 0, 1])
    mask = np.ones_like(actual, bool)
    assert series_average(smape, mask, groups) == pytest.approx(100 / 3)
    assert series_average(mape, mask, groups) == pytest.approx(50)
    zero = percentage_errors(np.zeros(1), np.zeros(1))
    assert zero[0][0] == 0 and np.isnan(zero[1][0])  # y = f = 0: sMAPE 0, MAPE undefined (left out)


def test_panel_metrics_match_a_computation_by_hand(tmp_path):
    task = protocol_task(tmp_path, {"a": 60, "b": 40, "c": 50})
    series, starts = task.series, task.eval_starts("test")
    actual, mask = series._actual(starts)
    point = actual * 1.1  # every forecast 10% high
    got = series.point_metrics(point, actual, mask, starts)
    assert got["mape"] == pytest.approx(10)
    assert got["smape"] == pytest.approx(200 * 0.1 / 2.1)
    by_hand = [np.mean(0.1 * actual[k] / task.several["mase_scale_test"][k][0]) for k in range(3)]
    assert got["mase"] == pytest.approx(np.mean(by_hand))


@pytest.mark.parametrize("name, series, naive, snaive", [
    ("quarterly", 427, (3.633, 31.68), (1.699, 16.61)),
    ("monthly", 366, (3.591, 40.41), (1.631, 21.67)),
])
def test_the_tourism_configs_reproduce_the_published_baselines(name, series, naive, snaive):
    """statsforecast 2.1.1's Naive and SeasonalNaive on the official protocol (data/README.md)."""
    import yaml
    from pathlib import Path

    repo = Path(__file__).resolve().parents[3]
    cfg = validate_config(yaml.safe_load((repo / "configs" / f"tourism_{name}.yaml").read_text()))
    cfg.data.path = str(repo / cfg.data.path)
    task = ForecastTask.from_config(cfg, rows_per_step=256)
    assert len(task.ids) == series and len(task.eval_starts("test")) == series  # one window per series
    got = task.baselines()
    assert (round(got["test/naive_mase"], 3), round(got["test/naive_smape"], 2)) == naive
    assert (round(got["test/seasonal_naive_mase"], 3), round(got["test/seasonal_naive_smape"], 2)) == snaive
