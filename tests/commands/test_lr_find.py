"""grutrain lr-find: the exponential sweep, fastai's smoothing, the divergence stop, the steepest-descent
suggestion (on curves whose answer is known), the files written, and that no run is touched."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from grutrain.commands import lr_find
from grutrain.tasks import load_config


def test_schedule_is_exponential_from_start_to_end():
    lrs = lr_find.lr_schedule(1e-6, 1.0, 13)
    assert lrs[0] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(1.0)
    ratios = np.diff(np.log(lrs))
    assert np.allclose(ratios, math.log(1e6) / 12)


def test_smoothing_is_bias_corrected_like_fastai():
    # A constant loss stays constant from the first point on (without the correction the
    # average would start at 0.02 * loss).
    assert lr_find.smooth_losses([2.0] * 5) == pytest.approx([2.0] * 5)
    losses = [3.0, 1.0, 2.0]
    avg, want = 0.0, []
    for i, loss in enumerate(losses):
        avg = 0.98 * avg + 0.02 * loss
        want.append(avg / (1 - 0.98 ** (i + 1)))
    assert lr_find.smooth_losses(losses) == pytest.approx(want)


def test_suggestion_is_the_steepest_descent_before_the_minimum():
    # A loss that falls like a logistic in ln(lr), steepest at lr = 1e-3, then rises sharply past 1e-1.
    lrs = lr_find.lr_schedule(1e-7, 1.0, 141)
    x = np.log(lrs)
    curve = 3.0 - 2.0 / (1 + np.exp(-(x - math.log(1e-3)) * 1.5)) + np.where(x > math.log(0.1), (x - math.log(0.1)) ** 2, 0)
    index, slope = lr_find.suggest(lrs, list(curve))
    assert lrs[index] == pytest.approx(1e-3, rel=0.1)
    assert slope == pytest.approx(-2.0 * 1.5 / 4, rel=0.02)  # the logistic's steepest slope
    # Past the minimum the curve rises: a steeper fall there (none here) would not count, and a
    # curve that only rises has no suggestion.
    assert lr_find.suggest(lrs, list(np.linspace(1, 2, 141))) == (None, None)


class _Quadratic(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([5.0]))


class _Samples:
    def __init__(self):
        self.generator = torch.Generator().manual_seed(0)

    def next_batch(self):
        return 1.0 + 0.1 * torch.randn(1, generator=self.generator), False


class _QuadraticTask:
    """loss = (w - x)^2 with x ~ N(1, 0.1^2) per step: SGD diverges once lr > 1 (each step
    multiplies w - x by 1 - 2 lr), and the noise keeps the gradient from ever being exactly 0."""

    carries_state = False

    def __init__(self):
        self.sampler = _Samples()

    def build_model(self):
        return _Quadratic()

    def loss(self, model, batch, hidden):
        (x,) = batch
        return ((model.w - x) ** 2).sum(), None


def test_range_test_stops_when_the_loss_explodes(write_config, monkeypatch):
    import grutrain.tasks

    monkeypatch.setattr(grutrain.tasks, "training_task", lambda cfg, **kw: _QuadraticTask())
    cfg = load_config(write_config(), ["optim.name=sgd", "optim.grad_clip=null"])
    result = lr_find.range_test(cfg, start=1e-4, end=100.0, steps=120)
    assert len(result.lrs) < 120 and "exceeded 4x the best" in result.stop_reason
    assert result.smoothed[-1] > 4 * min(result.smoothed)
    assert 1.0 < result.lrs[-1]  # it can only blow up where SGD diverges
    assert result.smoothed == pytest.approx(lr_find.smooth_losses(result.losses))
    faster = lr_find.range_test(cfg, start=1e-4, end=100.0, steps=120, smoothing=0.5)
    assert faster.smoothed == pytest.approx(lr_find.smooth_losses(faster.losses, 0.5))
    assert len(faster.lrs) <= len(result.lrs)  # a less smoothed loss shows the blow-up sooner
    assert result.lrs == pytest.approx(lr_find.lr_schedule(1e-4, 100.0, 120)[: len(result.lrs)])
    assert 1e-3 < result.suggestion < 1.0  # where SGD converges fastest, short of divergence


def test_cli_writes_curve_and_plot_and_touches_no_run(write_config, tmp_path, run_cli, monkeypatch, snapshot):
    monkeypatch.chdir(tmp_path)
    config = write_config(run_dir=tmp_path / "the-run")
    before = snapshot(tmp_path)
    code, out, err = run_cli(["lr-find", config, "train.seed=1", "--steps", "25", "--start", "1e-4", "--end", "1"])
    assert code == 0, err
    directory = tmp_path / "lr-find" / "tiny-1"
    assert "suggested lr" in out or "no suggestion" in out
    assert "minimum smoothed loss" in out and "lr-find/tiny-1/lr_find.csv" in out
    summary = json.loads((directory / "lr_find.json").read_text())
    table = lr_find.read_csv(directory / "lr_find.csv")
    assert table["lr"] == pytest.approx(summary["lrs"]) and table["loss"] == pytest.approx(summary["losses"])
    assert table["smoothed_loss"] == pytest.approx(summary["smoothed"])
    assert table["step"] == list(range(1, len(summary["lrs"]) + 1))
    assert (directory / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if summary["suggestion"] is not None:
        assert f"suggested lr: {summary['suggestion']:.3g}" in out
    # Nothing else changed: no run directory, no runs/.
    after = snapshot(tmp_path)
    assert {k for k in after if not k.startswith("lr-find/")} == set(before)
    assert not (tmp_path / "the-run").exists() and not (tmp_path / "runs").exists()
    # The next one goes to a fresh directory.
    code, _, err = run_cli(["lr-find", config, "--steps", "10"])
    assert code == 0, err
    assert (tmp_path / "lr-find" / "tiny-2" / "lr_find.csv").is_file()


def test_output_dir_inside_runs_or_a_run_is_refused(write_config, tmp_path, run_cli, monkeypatch, snapshot):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "tiny-1"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("task: lm\n")
    elsewhere = tmp_path / "old-run"
    (elsewhere / "checkpoints").mkdir(parents=True)
    (elsewhere / "config.yaml").write_text("task: lm\n")
    before = snapshot(tmp_path)
    config = write_config()
    for target in (tmp_path / "runs" / "lr", run / "lr", elsewhere, elsewhere / "sub"):
        code, out, err = run_cli(["lr-find", config, "--steps", "10", "--output-dir", target])
        assert code == 1 and "never writes into runs" in err, (target, err)
        assert "Traceback" not in err
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("config")} == before


def test_without_matplotlib_the_csv_is_still_written(write_config, tmp_path, run_cli, monkeypatch):
    from grutrain import plots

    monkeypatch.setattr(plots, "have_matplotlib", lambda: False)
    code, out, err = run_cli(["lr-find", write_config(), "--steps", "10", "--output-dir", tmp_path / "out"])
    assert code == 0, err
    assert (tmp_path / "out" / "lr_find.csv").is_file() and not (tmp_path / "out" / "lr_find.png").exists()
    assert "pip install 'grutrain[plot]'" in err


def test_bad_sweep_is_a_one_line_error(write_config, tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["lr-find", write_config(), "--start", "1", "--end", "0.1"])
    assert code == 1 and "start < end" in err
    assert not (tmp_path / "lr-find").exists() or not any((tmp_path / "lr-find").iterdir())


def test_a_signal_that_comes_back_as_another_error_ends_as_the_signal(write_config, tmp_path, run_cli, monkeypatch,
                                                                       snapshot):
    """As for fit (tests/hostile/test_signals.py): a SIGTERM whose Interrupted Python wrapped in a RuntimeError
    while the model was built ends lr-find with 143, one line, and no lr-find/ directory."""
    import signal

    import grutrain.capacity as capacity
    from hostile import interrupted_then_wrapped

    monkeypatch.chdir(tmp_path)
    config = write_config(run_dir=tmp_path / "the-run")
    monkeypatch.setattr(capacity, "parameter_count", interrupted_then_wrapped)
    before = snapshot(tmp_path)
    code, out, err = run_cli(["lr-find", config, "--steps", "10"])
    assert code == 128 + signal.SIGTERM, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "lr-find interrupted by SIGTERM; it wrote nothing" in lines[0], err
    assert snapshot(tmp_path) == before
