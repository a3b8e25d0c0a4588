"""data.conformal_from: CQR scores pooled over several validation origins (conformal.py), on data with a
known distribution, and a refit model calibrated by the scores of a checkpoint fitted at an earlier origin."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from grutrain.errors import GrutrainError
from grutrain.files.checkpoint import load_checkpoint, save_checkpoint
from grutrain.tasks import validate_config
from grutrain.tasks.forecast.conformal import apply_offsets, cqr_scores, offsets_from_scores
from grutrain.tasks.forecast.task import ForecastTask
from test_forecast import cli
from test_forecast_panel import H, config, panel_rows, write

QUANTILES = (0.1, 0.5, 0.9)


def block(rng, n, sd):
    """One validation-sized block: y ~ N(0, sd) in every series (a calm or a wild year), heads at +-0.5."""
    actual = sd * rng.standard_normal((n, 2, 1))
    heads = np.stack([np.full_like(actual, -0.5), np.zeros_like(actual), np.full_like(actual, 0.5)], axis=-1)
    return heads, actual


def coverage(heads, actual, offsets):
    calibrated = apply_offsets(heads, offsets, np.ones((len(actual), 1, 1)), QUANTILES, 1)
    return ((actual >= calibrated[..., 0]) & (actual <= calibrated[..., 2])).mean()


def scores(heads, actual):
    return cqr_scores(heads, actual, np.ones_like(actual, bool), np.ones((len(actual), 1, 1)), QUANTILES)


def test_pooled_origins_cover_a_new_year_drawn_like_them_where_one_origin_misses():
    # Years are calm (sd 1) or wild (sd 3) with equal chance; a new year is either, so over years the
    # target is the mixture. One calm calibration year under-covers it, one wild year over-covers;
    # a calm and a wild year pooled give the mixture's 80%.
    rng = np.random.default_rng(0)
    calm, wild = block(rng, 4000, 1.0), block(rng, 4000, 3.0)
    new = [block(rng, 4000, sd) for sd in (1.0, 3.0)]
    mixture = lambda offsets: np.mean([coverage(*b, offsets) for b in new])  # noqa: E731
    assert mixture(offsets_from_scores(scores(*calm), QUANTILES)) < 0.7
    assert mixture(offsets_from_scores(scores(*wild), QUANTILES)) > 0.88
    pooled = offsets_from_scores(np.concatenate([scores(*calm), scores(*wild)], axis=1), QUANTILES)
    assert mixture(pooled) == pytest.approx(0.8, abs=0.025)


def test_blank_cells_are_left_out_of_the_scores():
    rng = np.random.default_rng(1)
    heads, actual = block(rng, 1000, 1.0)
    mask = np.ones_like(actual, bool)
    mask[:500] = False
    actual[:500] = 1e6  # would widen Q to 1e6 if it were scored
    s = cqr_scores(heads, actual, mask, np.ones((1000, 1, 1)), QUANTILES)
    assert np.isnan(s[:, :500]).all()
    assert offsets_from_scores(s, QUANTILES).max() < 5


def test_a_refit_model_is_calibrated_by_an_earlier_origins_checkpoint(tmp_path, capsys):
    path = write(tmp_path, panel_rows())
    earlier = config(path, tmp_path / "earlier", quantiles=list(QUANTILES), val_rows=2, test_rows=4)
    (tmp_path / "earlier.yaml").write_text(yaml.safe_dump(earlier))
    assert cli(["fit", tmp_path / "earlier.yaml"], capsys)[0] == 0
    ckpt = tmp_path / "earlier" / "checkpoints" / "last.pt"
    cfg = config(path, quantiles=list(QUANTILES), val_rows=2, test_rows=2, refit=True)
    model = ForecastTask.from_config(validate_config(cfg), rows_per_step=16).build_model()
    alone = ForecastTask.from_config(validate_config(cfg), rows_per_step=16)
    assert "coverage_80_raw" not in alone.report(model, "test", torch.device("cpu"))  # refit: no calibration
    cfg["data"]["conformal_from"] = [str(ckpt)]
    task = ForecastTask.from_config(validate_config(cfg), rows_per_step=16)
    report = task.report(model, "test", torch.device("cpu"))
    assert report["coverage_80_raw"] == 0 and report["coverage_80"] > 0  # a zero head widened by the scores
    # the offsets are those of the earlier checkpoint's own validation block
    other = task._scores_of(str(ckpt), torch.device("cpu"))
    np.testing.assert_allclose(task._conformal(model, "test", torch.device("cpu")),
                               offsets_from_scores(other, QUANTILES))
    cfg["data"]["conformal_from"] = [str(tmp_path / "missing.pt")]
    with pytest.raises(GrutrainError, match="^data.conformal_from: .*missing.pt"):  # at once, before any training
        ForecastTask.from_config(validate_config(cfg), rows_per_step=16)


def test_the_checkpoint_keeps_the_earlier_scores_so_eval_and_predict_need_not_find_those_files(tmp_path, capsys):
    path = write(tmp_path, panel_rows())
    earlier = config(path, tmp_path / "earlier", quantiles=list(QUANTILES), val_rows=2, test_rows=4)
    (tmp_path / "earlier.yaml").write_text(yaml.safe_dump(earlier))
    assert cli(["fit", tmp_path / "earlier.yaml"], capsys)[0] == 0
    cfg = config(path, quantiles=list(QUANTILES), val_rows=2, test_rows=2, refit=True,
                 conformal_from=["earlier/checkpoints/last.pt"])  # relative to the directory fit runs in
    (tmp_path / "final.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        assert cli(["fit", "final.yaml"], capsys)[0] == 0
    final = tmp_path / "run" / "checkpoints" / "last.pt"

    def commands():
        code, out, err = cli(["eval", final, "--split", "test", "--json"], capsys)
        assert code == 0, err
        predicted = cli(["predict", final, "--input", path, "--format", "jsonl"], capsys)
        assert predicted[0] == 0, predicted[2]
        return json.loads(out)["coverage_80"], predicted[1]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        in_place = commands()
    (tmp_path / "earlier").rename(tmp_path / "moved")  # and run from elsewhere: the relative path leads nowhere
    assert commands() == in_place
    payload = load_checkpoint(final)
    stored = payload["task_state"]["conformal_from_scores"]
    assert len(stored) == 1 and stored[0].shape[0] == 1 and stored[0].shape[2:] == (H, 1)
    payload["task_state"]["conformal_from_scores"] = [stored[0][:, :, :1]]  # damaged: the files are read again
    save_checkpoint(payload, final)
    code, out, err = cli(["eval", final, "--split", "test"], capsys)
    assert code == 1 and "data.conformal_from: checkpoint 'earlier/checkpoints/last.pt' not found" in err
