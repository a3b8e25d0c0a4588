"""data.theta_weight: the Theta method against closed forms on tiny series, and the combination of an
untrained model (its anchor) with it, window by window on each series' own rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grutrain.tasks import validate_config
from grutrain.tasks.forecast.task import ForecastTask
from grutrain.tasks.forecast.classical import classical_windows, combine
from grutrain.tasks.forecast.mstl import mstl_forecast
from grutrain.tasks.forecast.theta import ses, theta_forecast
from test_forecast_panel import config, panel_rows, write


def test_ses_and_theta_match_a_computation_by_hand():
    # sse(alpha) = 2^2 + (2 - (1 + 2 alpha))^2 is least at alpha 0.5; levels 1 -> 2 -> 2; OLS slope 0.5
    y = np.array([1.0, 3.0, 2.0])
    np.testing.assert_allclose(ses(y), (0.5, 2.0))
    drift = (1 - 0.5 ** 3) / 0.5
    np.testing.assert_allclose(theta_forecast(y, 2), [2 + 0.25 * drift, 2 + 0.25 * (1 + drift)])


def test_theta_on_a_straight_line_is_the_last_value_plus_half_the_drift():
    y = 5.0 + 2.0 * np.arange(30)  # alpha 1 (each level is the last value); slope 2
    np.testing.assert_allclose(theta_forecast(y, 4), y[-1] + np.arange(1, 5), rtol=1e-9)


def test_a_seasonal_series_is_deseasonalised_and_its_season_put_back():
    pattern = np.array([0.5, 1.5, 1.2, 0.8])
    y = 10.0 * np.tile(pattern, 8)  # a constant level times a season: the forecast continues it exactly
    np.testing.assert_allclose(theta_forecast(y, 6, m=4), 10.0 * pattern[np.arange(32, 38) % 4], rtol=1e-9)
    shifted = np.tile(pattern, 8) - 1.0  # values <= 0: an additive season
    np.testing.assert_allclose(theta_forecast(shifted, 4, m=4), pattern - 1.0, atol=1e-9)


def test_windows_read_only_their_own_series_before_the_origin():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(1, 2, 20), rng.uniform(5, 9, 25)
    values = np.concatenate([a, b])[:, None]
    rows = np.repeat([0, 1], [20, 25])
    method = lambda y, h: theta_forecast(y, h, 4)  # noqa: E731
    got = classical_windows(method, values, np.ones_like(values, bool), np.array([15, 40]), rows, 3, 1)
    np.testing.assert_allclose(got[0, :, 0], theta_forecast(a[:15], 3, 4))
    np.testing.assert_allclose(got[1, :, 0], theta_forecast(b[:20], 3, 4))


@pytest.mark.parametrize("factor", [1e295, 1e-295])
def test_classical_forecasts_of_huge_or_tiny_values_are_the_ordinary_ones_rescaled(factor):
    # both methods are scale-equivariant; fitted on the raw values their squares overflow (underflow)
    rng = np.random.default_rng(1)
    y = 100 + 10 * np.sin(2 * np.pi * np.arange(120) / 12) + rng.normal(0, 1, 120)
    methods = [lambda v, h: theta_forecast(v, h, 12), lambda v, h: mstl_forecast(v, h, [12])]
    starts = np.array([60, 120])
    for method in methods:
        ordinary = classical_windows(method, y[:, None], np.ones((120, 1), bool), starts, None, 6, 1)
        np.testing.assert_array_equal(ordinary[:, :, 0], [method(y[:60], 6), method(y[:120], 6)])  # unchanged
        with np.errstate(all="raise"):
            scaled = classical_windows(method, y[:, None] * factor, np.ones((120, 1), bool), starts, None, 6, 1)
        np.testing.assert_allclose(scaled, ordinary * factor, rtol=1e-12)


def test_the_combination_moves_every_quantile_with_the_point():
    forecast = np.array([[[[1.0, 2.0, 4.0]]]])  # [W, H, T, Q]
    got = combine(forecast, [(0.25, np.array([[[6.0]]]))], 1)
    np.testing.assert_allclose(got, [[[[2.0, 3.0, 5.0]]]])  # point 0.75 * 2 + 0.25 * 6 = 3
    got = combine(forecast, [(0.25, np.array([[[6.0]]])), (0.5, np.array([[[4.0]]]))], 1)
    np.testing.assert_allclose(got, [[[[3.0, 4.0, 6.0]]]])  # point 0.25 * 2 + 0.25 * 6 + 0.5 * 4 = 4


def test_theta_weight_combines_the_models_forecast_with_theta(tmp_path):
    path = write(tmp_path, panel_rows({"a": 60, "b": 50}))
    forecasts = []
    for weight in (0.0, 0.4):
        cfg = config(path, anchor="profile", transform="log", val_rows=4, test_rows=2, theta_weight=weight)
        task = ForecastTask.from_config(validate_config(cfg), rows_per_step=16)
        torch.manual_seed(0)
        starts = task.eval_starts("test")
        forecasts.append(task.series.forecast(task.build_model(), starts, torch.device("cpu"))[..., 0, 0])
    expected = 0.6 * forecasts[0] + 0.4 * task.series.theta(starts)[..., 0]
    np.testing.assert_allclose(forecasts[1], expected, rtol=1e-9)


def test_a_single_series_checkpoint_keeps_every_row_for_theta(tmp_path, capsys):
    from test_forecast import HEADER, cli, forecast_config, series_rows, write_config, write_csv
    import json
    data = write_csv(tmp_path / "s.csv", HEADER, series_rows(120))
    cfg = forecast_config(data, tmp_path / "run", theta_weight=0.5)
    assert cli(["fit", write_config(tmp_path, cfg)], capsys)[0] == 0
    final = json.loads((tmp_path / "run" / "summary.json").read_text())["final"]
    code, out, err = cli(["eval", tmp_path / "run" / "checkpoints" / "last.pt", "--split", "test", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["mae"] == pytest.approx(final["test/mae"], rel=1e-9)  # the same history as in the fit
