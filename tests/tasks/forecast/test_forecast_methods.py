"""The panel methods: the seasonal-profile anchor, the log transform, the median ensemble and
data.refit, each against a computation by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grutrain.tasks import validate_config
from grutrain.tasks.forecast.ensemble import MedianEnsemble, per_member
from grutrain.tasks.forecast.task import ForecastTask
from grutrain.tasks.forecast.windows import WindowLayout, profile_anchor
from test_forecast_panel import config, panel_rows, write

H = 2


def test_the_profile_anchor_is_the_last_seasons_mean_plus_the_mean_seasonal_deviation():
    m, K = 4, 3
    rng = np.random.default_rng(0)
    series = rng.normal(size=40)
    layout = WindowLayout(input_len=8, horizon=6, n_targets=1, anchor_lag=m, profile_periods=K)
    starts = torch.tensor([20, 33])
    got = profile_anchor(torch.from_numpy(series[:, None]).float(), starts, layout)[..., 0].numpy()
    for row, s in zip(got, starts.tolist()):
        seasons = series[s - K * m:s].reshape(K, m)
        deviation = (seasons - seasons.mean(axis=1, keepdims=True)).mean(axis=0)
        expected = [seasons[-1].mean() + deviation[k % m] for k in range(6)]
        np.testing.assert_allclose(row, expected, rtol=1e-5, atol=1e-6)


def test_an_untrained_log_profile_model_forecasts_the_profile_of_the_logs(tmp_path):
    cfg = config(write(tmp_path, panel_rows({"a": 60, "b": 50})), anchor="profile", profile_periods=2,
                 transform="log", val_rows=4, test_rows=H)
    task = ForecastTask.from_config(validate_config(cfg), rows_per_step=16)
    model = task.build_model()  # a zero head: the forecast is the anchor
    starts = task.eval_starts("test")
    forecast = task.series.forecast(model, starts, torch.device("cpu"))[..., 0, 0]
    for row, s in zip(forecast, starts):
        logs = np.log1p(task.series.values[s - 8:s, 0]).reshape(2, 4)
        profile = (logs - logs.mean(axis=1, keepdims=True)).mean(axis=0)
        expected = np.expm1([logs[-1].mean() + profile[k % 4] for k in range(H)])
        np.testing.assert_allclose(row, expected, rtol=1e-5)


def test_negative_targets_are_refused_under_the_log_transform(tmp_path):
    rows = panel_rows({"a": 60})
    rows[3][2] = "-5"
    cfg = config(write(tmp_path, rows), transform="log", val_rows=4, test_rows=H)
    with pytest.raises(Exception, match="non-negative"):
        ForecastTask.from_config(validate_config(cfg), rows_per_step=16)


def test_the_ensemble_forecasts_the_median_and_trains_every_member():

    class Member(torch.nn.Module):
        def __init__(self, offset):
            super().__init__()
            self.offset = torch.nn.Parameter(torch.tensor(float(offset)))

        def forward(self, x):
            return x[:, -1, :2] * 0 + self.offset, None

    ensemble = MedianEnsemble([Member(v) for v in (5.0, -1.0, 2.0)])
    x = torch.zeros(4, 6, 3)
    ensemble.eval()
    assert torch.equal(ensemble(x)[0], torch.full((4, 2), 2.0))  # the median member
    ensemble.train()
    out, anchor = per_member(ensemble(x)[0], torch.ones(4, 1))
    assert out.shape == (12, 2) and anchor.shape == (12, 1)
    out.sum().backward()
    assert all(m.offset.grad is not None for m in ensemble.members)


def test_an_ensemble_fits_and_evaluates(tmp_path, capsys):
    cfg = config(write(tmp_path, panel_rows()), ensemble=3, anchor="profile", val_rows=4, test_rows=H)
    task = ForecastTask.from_config(validate_config(cfg), rows_per_step=16)
    model = task.build_model()
    assert isinstance(model, MedianEnsemble) and len(model.members) == 3
    loss, _ = task.loss(model.train(), task._make_batch(torch.arange(8)), None)
    assert loss.dim() == 0 and torch.isfinite(loss)


def test_refit_trains_through_the_validation_block_but_never_the_test_block(tmp_path):
    def starts(refit):
        cfg = config(write(tmp_path, panel_rows({"a": 60, "b": 50})), refit=refit, val_rows=4, test_rows=H)
        task = ForecastTask.from_config(validate_config(cfg), rows_per_step=16)
        return task, task.train_starts.numpy()
    task, before = starts(False)
    _, after = starts(True)
    for k, (offset, (train_b, val_b, test_b)) in enumerate(zip(task.panel.offsets, task.panel.blocks)):
        mine = lambda s: s[(s >= offset) & (s < offset + test_b.stop)] - offset  # noqa: E731
        assert mine(before).max() + H == train_b.stop
        assert mine(after).max() + H == val_b.stop == test_b.start
