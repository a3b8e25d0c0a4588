"""The panel methods: the seasonal-profile anchor, the log transform, the median ensemble and
data.refit, each against a computation by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grutrain.errors import GrutrainError
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


def test_eval_and_predict_refuse_negative_targets_under_the_log_transform(tmp_path):
    rows = panel_rows({"a": 60, "b": 50})
    task = ForecastTask.from_config(validate_config(config(write(tmp_path, rows), transform="log", val_rows=4,
                                                           test_rows=H)), rows_per_step=16)
    model = task.build_model()
    rows[7][2] = "-5"  # a blank would be fine; a negative value cannot be read as log(1 + y)
    negative = write(tmp_path, rows, "negative.csv")
    for call in (lambda: task.evaluate(model, negative, torch.device("cpu")),
                 lambda: task.predict(model, negative, torch.device("cpu"))):
        with pytest.raises(GrutrainError, match="negative.csv: a target column holds negative values.*transform=log"):
            call()


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


def test_eval_of_a_refit_model_on_its_validation_block_says_the_figures_are_in_sample(tmp_path, capsys):
    import yaml
    from test_forecast import cli
    for refit in (False, True):
        cfg = config(write(tmp_path, panel_rows({"a": 60, "b": 50})), tmp_path / f"run{refit}", refit=refit,
                     val_rows=4, test_rows=H)
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
        assert cli(["fit", tmp_path / "c.yaml", "-q"], capsys)[0] == 0
        last = tmp_path / f"run{refit}" / "checkpoints" / "last.pt"
        code, out, err = cli(["eval", last, "--split", "val"], capsys)
        assert code == 0 and ("in-sample" in err) == refit, err
        assert "in-sample" not in cli(["eval", last, "--split", "test"], capsys)[2]


def _two_season_config(tmp_path, n=240, **data):
    """One series with a 'day' of 4 rows and a 'week' of 12, noise and a drifting level."""
    rng = np.random.default_rng(3)
    t = np.arange(n)
    y = 50 + 0.05 * t + 5 * np.sin(2 * np.pi * t / 4) + 3 * (t % 12 >= 8) + rng.standard_normal(n)
    path = tmp_path / "two.csv"
    path.write_text("value\n" + "".join(f"{v:.4f}\n" for v in y))
    cfg = {"task": "forecast",
           "data": {"path": str(path), "target_columns": ["value"], "input_len": 8, "horizon": 5, "season": [4, 12],
                    "calendar": "none", "val_fraction": 0.2, "test_fraction": 0.2, **data},
           "model": {"hidden_size": 8}, "train": {"max_steps": 2, "batch_size": 8, "device": "cpu", "threads": 1},
           "run": {"dir": str(tmp_path / "run")}}
    return validate_config(cfg), y


def _profile_by_hand(y, s, m, d, K, L, D, H):
    """The anchor of docs/forecasting.md written out with loops: the mean weekly deviation over K weeks, the
    level of the last L rows net of it, the centred mean residual of the last D days at each daily phase."""
    weeks = y[s - K * m:s].reshape(K, m)
    dev = np.mean([w - w.mean() for w in weeks], axis=0)  # phase p of m = rows s - K*m + p, ...
    level = np.mean([y[r] - dev[(r - s) % m] for r in range(s - L, s)])
    residuals = {}
    for r in range(s - D * d, s):
        residuals.setdefault((r - s) % d, []).append(y[r] - level - dev[(r - s) % m])
    shape = np.array([np.mean(residuals[p]) for p in range(d)]) if D else np.zeros(d)
    shape -= shape.mean()
    return np.array([level + dev[k % m] + shape[k % d] for k in range(H)]), dev


@pytest.mark.parametrize("level,recent", [(0, 0), (6, 0), (6, 2), (4, 1)])
def test_an_untrained_profile_model_forecasts_the_weekly_profile_with_the_recent_level_and_days(tmp_path, level,
                                                                                                  recent):
    K, m, d, H = 2, 12, 4, 5
    cfg, y = _two_season_config(tmp_path, anchor="profile", profile_periods=K, profile_level=level,
                                profile_recent=recent)
    task = ForecastTask.from_config(cfg, rows_per_step=8)
    assert task.layout.anchor_lag == m  # the longest season, whatever the order of data.season
    model = task.build_model()  # a zero head: the forecast is the anchor
    starts = task.eval_starts("test")
    forecast = task.series.forecast(model, starts, torch.device("cpu"))[..., 0, 0]
    for row, s in zip(forecast, starts):
        if level == 0:  # the last week's mean: the Tourism configs' anchor, unchanged
            weeks = y[s - K * m:s].reshape(K, m)
            expected = weeks[-1].mean() + np.mean([w - w.mean() for w in weeks], axis=0)[np.arange(H) % m]
        else:
            expected, dev = _profile_by_hand(y, s, m, d, K, level, recent, H)
        np.testing.assert_allclose(row, expected, rtol=1e-5)
        if (level, recent) == (d, 1):  # closed form: yesterday plus the average week's change since yesterday
            k = np.arange(H)
            yesterday = y[s - d + k % d]
            np.testing.assert_allclose(row, yesterday + dev[k % m] - dev[(k % d - d) % m], rtol=1e-5)


def test_the_profile_anchor_takes_the_longest_season_and_recent_days_need_two_seasons(tmp_path):
    cfg, _ = _two_season_config(tmp_path, anchor="profile", season=[12, 4])
    assert ForecastTask.from_config(cfg, rows_per_step=8).layout.anchor_lag == 12
    cfg, _ = _two_season_config(tmp_path, anchor="profile", season=12, profile_recent=1)
    with pytest.raises(Exception, match="profile_recent needs two seasons"):
        ForecastTask.from_config(cfg, rows_per_step=8)


def test_the_profile_keys_travel_in_the_layout_and_older_layouts_read_as_off():
    layout = WindowLayout(input_len=8, horizon=5, n_targets=1, anchor_lag=12, seasons=(4, 12), profile_periods=2,
                          profile_level=6, profile_recent=1)
    assert WindowLayout.from_dict(layout.to_dict()) == layout
    assert layout.history == max(8 + 12, 2 * 12, 6, 1 * 4)
    older = {k: v for k, v in layout.to_dict().items() if k not in ("profile_level", "profile_recent")}
    assert WindowLayout.from_dict(older).profile_level == 0 and WindowLayout.from_dict(older).profile_recent == 0
