"""data.mstl_weight: MSTL against statsmodels' STL loops and statsforecast's decomposition, and its
combination with an untrained model (its anchor) and with Theta, window by window."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from grutrain.tasks import validate_config
from grutrain.tasks.forecast.classical import classical_windows
from grutrain.tasks.forecast.mstl import _cycle_subseries, loess, mstl, mstl_forecast
from grutrain.tasks.forecast.task import ForecastTask
from test_forecast import assert_one_line_error, cli
from test_forecast_panel import config, panel_rows, write


# statsmodels' _stl.pyx (Cleveland et al.'s Fortran), point by point: the reference for the vectorised loess.
def _est(y, n, q, degree, xs, nleft, nright):
    h = max(xs - nleft, nright - xs) + ((q - n) // 2 if q > n else 0)
    w = np.zeros(n)
    for j in range(nleft - 1, nright):
        r = abs(j + 1 - xs)
        if r <= 0.999 * h:
            w[j] = 1.0 if r <= 0.001 * h else (1 - (r / h) ** 3) ** 3
    if w.sum() <= 0:
        return math.nan
    w /= w.sum()
    if h > 0 and degree > 0:
        a = sum(w[j] * (j + 1) for j in range(nleft - 1, nright))
        c = sum(w[j] * (j + 1 - a) ** 2 for j in range(nleft - 1, nright))
        if math.sqrt(c) > 0.001 * (n - 1):
            for j in range(nleft - 1, nright):
                w[j] *= (xs - a) / c * (j + 1 - a) + 1
    return float(w @ y)


def _ess(y, q, degree):
    n = len(y)
    out = np.zeros(n)
    nleft, nright = 1, min(q, n)
    for i in range(n):
        if q < n and i + 1 > (q + 2) // 2 and nright != n:
            nleft, nright = nleft + 1, nright + 1
        v = _est(y, n, q, degree, i + 1, nleft, nright)
        out[i] = y[i] if math.isnan(v) else v
    return out


def _ss(y, period, window):
    n = len(y)
    out = np.zeros(n + 2 * period)
    for j in range(period):
        k = (n - (j + 1)) // period + 1
        sub = y[j::period][:k]
        smooth = np.r_[0.0, _ess(sub, window, 0), 0.0]
        smooth[0] = _est(sub, k, window, 0, 0, 1, min(window, k))
        smooth[k + 1] = _est(sub, k, window, 0, k + 1, max(1, k - window + 1), k)
        out[j + period * np.arange(k + 2)] = smooth
    return out


@pytest.mark.parametrize("q", [3, 7, 11, 39, 40, 41, 85])
@pytest.mark.parametrize("degree", [0, 1])
def test_loess_matches_stls_point_by_point_loops(q, degree):
    y = np.random.default_rng(q).standard_normal(40).cumsum()
    np.testing.assert_allclose(loess(y, q, degree), _ess(y, q, degree), atol=1e-12)


@pytest.mark.parametrize("period,window", [(4, 11), (7, 11), (12, 15), (48, 11)])
def test_cycle_subseries_match_stls_loops(period, window):
    y = np.random.default_rng(period).standard_normal(100).cumsum()
    np.testing.assert_allclose(_cycle_subseries(y, period, window), _ss(y, period, window), atol=1e-12)


def test_the_decomposition_equals_statsforecasts():
    # statsforecast 2.1.1's statsforecast.mstl.mstl(y, [4, 12]) on this series (statsmodels 0.14 STL underneath)
    t = np.arange(90)
    y = 50 + 0.1 * t + 3 * np.sin(2 * np.pi * t / 4) + 2 * np.cos(2 * np.pi * t / 12) + np.sin(t * 1.7) ** 3
    seasonal, trend, remainder = mstl(y, [4, 12])
    np.testing.assert_allclose(seasonal[0][-4:], [0.08966441, -2.62504419, -0.15975524, 2.68099829], atol=1e-8)
    np.testing.assert_allclose(seasonal[1][-12:], [-1.96983644, -1.77738073, -1.069343, 0.03314055, 1.09529654,
                                                   1.71594001, 1.88996799, 1.78071699, 1.11456801, -0.07497912,
                                                   -1.0952616, -1.64512154], atol=1e-8)
    np.testing.assert_allclose(trend[[0, 1, 2, -3, -2, -1]], [50.09138449, 50.18033906, 50.27015602, 58.69683466,
                                                              58.79679324, 58.89650622], atol=1e-8)
    np.testing.assert_allclose(seasonal.sum(axis=0) + trend + remainder, y, atol=1e-9)


def test_a_level_and_a_season_are_continued_exactly():
    pattern = np.array([1.0, -2.0, 0.5, 3.0, -1.5, -0.5, -0.5])  # mean 0
    y = 40.0 + np.tile(pattern, 10)
    np.testing.assert_allclose(mstl_forecast(y, 10, [7]), 40.0 + pattern[np.arange(70, 80) % 7], atol=1e-9)


def test_seasons_without_two_cycles_of_history_are_left_out():
    y = 5.0 + np.tile([1.0, -1.0], 10)  # 20 rows: a season of 2 fits, one of 12 does not
    np.testing.assert_allclose(mstl_forecast(y, 4, [2, 12]), mstl_forecast(y, 4, [2]))
    assert np.allclose(mstl_forecast(np.array([3.0]), 2, [2]), 3.0)


def test_only_the_last_fifteen_longest_seasons_are_decomposed():
    t = np.arange(400)
    y = 10 + np.sin(2 * np.pi * t / 4) + 0.3 * np.cos(2 * np.pi * t / 12) + np.random.default_rng(0).standard_normal(400)
    np.testing.assert_allclose(mstl_forecast(y, 5, [4, 12]), mstl_forecast(y[-180:], 5, [4, 12]))
    assert np.abs(mstl_forecast(y, 5, [4, 12]) - mstl_forecast(y[-168:], 5, [4, 12])).max() > 1e-3  # 14 cycles differ


def test_mstl_weight_combines_the_models_forecast_with_mstl_and_theta(tmp_path):
    path = write(tmp_path, panel_rows({"a": 60, "b": 50}))
    forecasts = []
    for weights in ({}, {"mstl_weight": 0.3, "theta_weight": 0.2}):
        cfg = config(path, anchor="profile", transform="log", val_rows=4, test_rows=2, **weights)
        task = ForecastTask.from_config(validate_config(cfg), rows_per_step=16)
        torch.manual_seed(0)
        starts = task.eval_starts("test")
        forecasts.append(task.series.forecast(task.build_model(), starts, torch.device("cpu"))[..., 0, 0])
    expected = 0.5 * forecasts[0] + 0.3 * task.series.mstl(starts)[..., 0] + 0.2 * task.series.theta(starts)[..., 0]
    np.testing.assert_allclose(forecasts[1], expected, rtol=1e-9)
    # each window's own series, rows before its origin; the cache returns them in any order, repeated
    again = starts[::-1].tolist() + [int(starts[0])]
    direct = classical_windows(lambda y, h: mstl_forecast(y, h, [4]), task.series.values, task.series.observed,
                               np.array(again), task.series.row_series, 2, 1)
    np.testing.assert_allclose(task.series.mstl(np.array(again)), direct)


def test_a_checkpoint_keeps_the_held_out_windows_classical_forecasts(tmp_path, capsys):
    import json
    from grutrain.files.checkpoint import load_checkpoint, save_checkpoint
    from test_forecast import HEADER, forecast_config, series_rows, write_config, write_csv
    data = write_csv(tmp_path / "s.csv", HEADER, series_rows(120))
    cfg = forecast_config(data, tmp_path / "run", mstl_weight=0.5, theta_weight=0.2)
    assert cli(["fit", write_config(tmp_path, cfg)], capsys)[0] == 0
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    payload = load_checkpoint(path)
    task = ForecastTask.from_checkpoint(validate_config(cfg), payload["task_state"])
    stored = payload["task_state"]["eval_series"]["classical"]
    assert sorted(stored) == ["val_mstl", "val_theta"]  # the windows predict calibrates on (last.pt: before test)
    held = task._split("val")
    fresh = classical_windows(lambda y, h: mstl_forecast(y, h, [cfg["data"]["season"]]), held.series.values,
                              held.series.observed, held.starts, None, cfg["data"]["horizon"], 1)
    np.testing.assert_allclose(stored["val_mstl"].numpy(), fresh)  # what a fresh computation gives

    def val_mae():
        code, out, err = cli(["eval", path, "--split", "val", "--json"], capsys)
        assert code == 0, err
        return json.loads(out)["mae"]
    before = val_mae()
    payload["task_state"]["eval_series"]["classical"]["val_mstl"] = stored["val_mstl"] + 1000.0
    save_checkpoint(payload, path)
    assert val_mae() > before + 400  # eval read the stored MSTL forecasts: 0.5 x 1000 off
    payload["task_state"]["eval_series"]["classical"]["val_mstl"] = stored["val_mstl"][:1]  # damaged: recomputed
    save_checkpoint(payload, path)
    assert val_mae() == pytest.approx(before, rel=1e-12)


def test_weights_summing_to_more_than_one_are_refused(tmp_path, capsys):
    from test_forecast import HEADER, forecast_config, series_rows, write_config, write_csv
    data = write_csv(tmp_path / "s.csv", HEADER, series_rows(120))
    cfg = forecast_config(data, tmp_path / "run", theta_weight=0.6, mstl_weight=0.6)
    assert_one_line_error(cli(["fit", write_config(tmp_path, cfg)], capsys), "data.theta_weight + data.mstl_weight is 1.2")
    assert not (tmp_path / "run").exists()
