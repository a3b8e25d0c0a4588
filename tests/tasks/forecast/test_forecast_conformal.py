"""CQR on the validation block (conformal.py): coverage on data with a known distribution, and the
calibrated intervals in eval's report."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grutrain.tasks import validate_config
from grutrain.tasks.forecast.conformal import apply_offsets, cqr_offsets
from grutrain.tasks.forecast.task import ForecastTask
from test_forecast_panel import config, panel_rows, write

QUANTILES = (0.1, 0.5, 0.9)


def draws(rng, n, H=3):
    """Two kinds of series (scale 1 and 20), y ~ scale * N(0, 1 + step), and overconfident heads at
    +-0.5 scale: their raw 80% interval covers about 38%/28%/22% by step."""
    scale = rng.choice([1.0, 20.0], size=(n, 1, 1))
    sd = np.sqrt(1.0 + np.arange(H))[None, :, None]
    actual = scale * sd * rng.standard_normal((n, H, 1))
    heads = np.stack([-0.5 * scale + 0 * actual, 0 * actual, 0.5 * scale + 0 * actual], axis=-1)
    return heads, actual, np.ones_like(actual, bool), scale


@pytest.mark.parametrize("seed", [0, 1])
def test_calibrated_intervals_cover_their_nominal_share_of_new_data(seed):
    rng = np.random.default_rng(seed)
    heads, actual, mask, scale = draws(rng, 3000)
    offsets = cqr_offsets(heads, actual, mask, scale, QUANTILES)
    new_heads, new_actual, new_mask, new_scale = draws(rng, 4000)
    raw = ((new_actual >= new_heads[..., 0]) & (new_actual <= new_heads[..., 2])).mean()
    calibrated = apply_offsets(new_heads, offsets, new_scale, QUANTILES, 1)
    inside = (new_actual >= calibrated[..., 0]) & (new_actual <= calibrated[..., 2])
    assert raw < 0.4
    for k in range(3):  # per step ahead, though the spread grows with the step
        assert inside[:, k].mean() == pytest.approx(0.8, abs=0.025)
    # Q is the 80% quantile of |y| / scale - 0.5 for a normal with sd sqrt(1 + k): 1.2816 sqrt(1 + k) - 0.5.
    np.testing.assert_allclose(offsets[0, :, 0], 1.2816 * np.sqrt(1 + np.arange(3)) - 0.5, atol=0.08)


def test_too_wide_intervals_are_narrowed_but_never_across_the_median():
    rng = np.random.default_rng(2)
    actual = rng.standard_normal((2000, 1, 1)) * 0.1
    heads = np.stack([np.full_like(actual, -5), np.zeros_like(actual), np.full_like(actual, 5)], axis=-1)
    offsets = cqr_offsets(heads, actual, np.ones_like(actual, bool), np.ones((2000, 1, 1)), QUANTILES)
    assert offsets[0, 0, 0] < -4.8
    narrowed = apply_offsets(heads, np.full_like(offsets, -10.0), np.ones((2000, 1, 1)), QUANTILES, 1)
    assert (narrowed[..., 0] <= narrowed[..., 1]).all() and (narrowed[..., 1] <= narrowed[..., 2]).all()


def test_eval_reports_calibrated_and_raw_coverage_on_test_but_not_on_val(tmp_path):
    cfg = config(write(tmp_path, panel_rows()), quantiles=list(QUANTILES), val_rows=6, test_rows=2)
    task = ForecastTask.from_config(validate_config(cfg), rows_per_step=16)
    model = task.build_model()  # zero head: every quantile is the anchor, a zero-width interval
    test = task.report(model, "test", torch.device("cpu"))
    val = task.report(model, "val", torch.device("cpu"))
    assert test["coverage_80_raw"] == 0 and test["coverage_80"] > 0.3
    assert "coverage_80_raw" not in val and val["coverage_80"] == 0
    cfg["data"]["conformal"] = False
    off = ForecastTask.from_config(validate_config(cfg), rows_per_step=16)
    assert off.report(model, "test", torch.device("cpu"))["coverage_80"] == 0
