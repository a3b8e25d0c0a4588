"""Figures: each figure function draws the numbers it is given (read back from the artists), the
per-position loss against a direct computation, `grutrain eval --plot` for lm, forecast and classify
checkpoints, TensorBoard images read back from the event file, and the message without matplotlib."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.nn import functional as F

pytest.importorskip("matplotlib")

from grutrain import plots  # noqa: E402
from grutrain.cli import main  # noqa: E402
from grutrain.config.schema import ModelConfig  # noqa: E402
from grutrain.commands.evaluate import checkpoint_figure  # noqa: E402
from grutrain.model import SequenceModel  # noqa: E402
from grutrain.tasks.lm.task import position_losses  # noqa: E402

from conftest import TINY_CONFIG, make_text  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


def test_confusion_matrix_figure_shows_the_counts():
    labels, matrix = ["cat", "dog", "eel"], [[5, 1, 0], [2, 7, 1], [0, 0, 4]]
    figure = plots.confusion_matrix_figure(labels, matrix)
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == labels
    assert [t.get_text() for t in ax.get_yticklabels()] == labels
    counts = {(round(t.get_position()[1]), round(t.get_position()[0])): int(t.get_text()) for t in ax.texts}
    assert counts == {(i, j): matrix[i][j] for i in range(3) for j in range(3)}  # row = true, column = predicted
    assert "accuracy 0.800" in ax.get_title()
    with pytest.raises(ValueError):
        plots.confusion_matrix_figure(labels, [[1, 2], [3, 4]])


def test_forecast_figure_draws_actual_model_and_baselines(tmp_path):
    actual = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])
    model, naive, seasonal = actual + 0.5, actual - 1, actual * 2
    figure = plots.forecast_figure(actual, model, naive, seasonal, names=["a", "b"], x=[7, 8, 9])
    assert len(figure.axes) == 2
    for j, ax in enumerate(figure.axes):
        lines = {line.get_label(): line for line in ax.lines}
        assert set(lines) == {"actual", "model", "naive (last value)", "seasonal naive"}
        assert list(lines["actual"].get_xdata()) == [7, 8, 9]
        for name, values in [("actual", actual), ("model", model), ("naive (last value)", naive),
                             ("seasonal naive", seasonal)]:
            assert np.allclose(lines[name].get_ydata(), values[:, j])
        assert ax.get_ylabel() == ["a", "b"][j]
    assert plots.save_figure(figure, tmp_path / "f.png").read_bytes()[:8] == PNG
    # A single series may be 1-D, and the seasonal baseline is optional.
    one = plots.forecast_figure([1, 2, 3], [1, 2, 2], [0, 1, 2])
    assert {line.get_label() for line in one.axes[0].lines} == {"actual", "model", "naive (last value)"}


def test_per_position_and_lr_find_figures(tmp_path):
    figure = plots.per_position_loss_figure([3.0, 2.0, 1.5], carried_loss=1.2, unit="character")
    ax = figure.axes[0]
    assert list(ax.lines[0].get_xdata()) == [1, 2, 3] and list(ax.lines[0].get_ydata()) == [3.0, 2.0, 1.5]
    assert list(ax.lines[1].get_ydata()) == [1.2, 1.2]
    lrs = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    figure = plots.lr_find_figure(lrs, [3, 2.9, 2, 1, 5], [3, 2.95, 2.5, 1.8, 2.9], suggestion=1e-3, min_loss_lr=1e-2)
    ax = figure.axes[0]
    assert ax.get_xscale() == "log"
    marker = next(line for line in ax.lines if line.get_label().startswith("suggestion"))
    assert list(marker.get_xdata()) == [1e-3] and list(marker.get_ydata()) == pytest.approx([2.5])
    path = plots.save_figure(figure, tmp_path / "lr.png")
    assert path.read_bytes()[:8] == PNG
    from grutrain.errors import GrutrainError

    with pytest.raises(GrutrainError, match="extension"):
        plots.save_figure(figure, tmp_path / "lr.nope")


def test_position_losses_against_a_direct_computation():
    torch.manual_seed(0)
    model = SequenceModel(ModelConfig(embedding_dim=3, hidden_size=5), 7, vocab_size=7, per_step=True).eval()
    tokens = torch.randint(0, 7, (53,))
    seq_len = 6
    got = position_losses(model, tokens, seq_len, torch.device("cpu"), batch_size=3)  # several batches
    n = (len(tokens) - 1) // seq_len  # 8 windows
    with torch.no_grad():
        want = torch.zeros(seq_len, dtype=torch.float64)
        for w in range(n):  # one window at a time, each from a zero state
            x = tokens[w * seq_len:(w + 1) * seq_len][None]
            y = tokens[w * seq_len + 1:(w + 1) * seq_len + 1]
            logits, _ = model(x)
            want += F.cross_entropy(logits[0], y, reduction="none").double()
    assert got == pytest.approx((want / n).tolist(), rel=1e-5)


def test_log_figure_writes_an_image_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from grutrain.trainer.metrics import MetricsLogger

    figure = plots.confusion_matrix_figure(["a", "b"], [[3, 1], [0, 4]])
    logger = MetricsLogger(tmp_path)
    logger.figure(250, "val/confusion_matrix", figure)
    logger.close()
    accumulator = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    accumulator.Reload()
    images = accumulator.Images("val/confusion_matrix")
    assert [i.step for i in images] == [250]
    width, height = (figure.get_size_inches() * figure.dpi).round().astype(int)
    assert (images[0].width, images[0].height) == (width, height)
    MetricsLogger(tmp_path / "off", enabled=False).figure(1, "x", figure)  # other ranks: nothing
    assert not (tmp_path / "off").exists()


# --------------------------------------------------------------------------- grutrain eval --plot


def _fit(config: dict, root: Path, name: str, overrides=()) -> Path:
    path = root / f"{name}.yaml"
    config = {**config, "run": {"dir": str(root / name), "name": name}}
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    with pytest.raises(SystemExit) as info:
        main(["fit", str(path), *overrides, "--quiet"])
    assert info.value.code == 0
    return root / name / "checkpoints" / "best.pt"


@pytest.fixture(scope="module")
def lm_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("plots")
    corpus = root / "corpus.txt"
    corpus.write_text(make_text(), encoding="utf-8")
    cfg = {k: dict(v) if isinstance(v, dict) else v for k, v in TINY_CONFIG.items()}
    cfg["data"]["path"] = str(corpus)
    cfg["sample"] = {"length": 0}
    return _fit(cfg, root, "lm")


def test_eval_plot_lm_json_stays_one_object(lm_checkpoint, tmp_path, run_cli):
    out = tmp_path / "positions.png"
    code, stdout, err = run_cli(["eval", lm_checkpoint, "--plot", out, "--json"])
    assert code == 0, err
    result = json.loads(stdout)  # nothing but the JSON object on stdout
    assert result["plot"] == str(out) and out.read_bytes()[:8] == PNG
    figure = checkpoint_figure(lm_checkpoint, split="val", device="cpu")
    curve, carried = figure.axes[0].lines[0], figure.axes[0].lines[1]
    assert len(curve.get_xdata()) == TINY_CONFIG["data"]["seq_len"]
    assert carried.get_ydata()[0] == pytest.approx(result["loss"], rel=1e-5)  # eval's own loss as the reference


def test_eval_plot_without_matplotlib_is_one_line(lm_checkpoint, tmp_path, run_cli, monkeypatch):
    monkeypatch.setattr(plots, "have_matplotlib", lambda: False)
    code, stdout, err = run_cli(["eval", lm_checkpoint, "--plot", tmp_path / "p.png"])
    assert code == 1 and err.strip() == "error: plots need the plot extra: pip install 'grutrain[plot]'"
    assert not (tmp_path / "p.png").exists()


def test_eval_plot_forecast_and_classify(tmp_path, run_cli):
    """The shipped sunspots and names data, a couple of steps each: the figures show the split's data."""
    from grutrain.commands.init import starter_text

    forecast = yaml.safe_load(starter_text("forecast"))
    forecast["data"]["path"] = str(REPO / "data" / "sunspots.csv")
    forecast["model"]["hidden_size"] = 4
    forecast["train"].update(max_steps=2, eval_every=2, checkpoint_every=2)
    checkpoint = _fit(forecast, tmp_path, "sun")
    code, stdout, err = run_cli(["eval", checkpoint, "--split", "test", "--plot", tmp_path / "sun.png", "--json"])
    assert code == 0, err
    result = json.loads(stdout)
    figure = checkpoint_figure(checkpoint, split="test", device="cpu")
    lines = {line.get_label(): line for line in figure.axes[0].lines}
    assert {"actual", "model", "naive (last value)", "seasonal naive"} <= set(lines)
    assert len(lines["actual"].get_ydata()) == result["windows"]
    years = np.genfromtxt(REPO / "data" / "sunspots.csv", delimiter=",", skip_header=1)
    # The test block ends the file; its last window's first target is horizon - 1 rows before the end.
    end = len(years) - (forecast["data"]["horizon"] - 1)
    assert np.allclose(lines["actual"].get_ydata(), years[end - result["windows"]:end, 1])
    naive = lines["naive (last value)"].get_ydata()
    assert np.allclose(naive[1:], lines["actual"].get_ydata()[:-1])  # last value = the previous year's

    classify = yaml.safe_load(starter_text("classify"))
    classify["data"]["path"] = str(REPO / "data" / "names.jsonl")
    classify["model"].update(hidden_size=4, embedding_dim=4)
    classify["train"].update(epochs=None, max_steps=2, eval_every=2, checkpoint_every=2)
    checkpoint = _fit(classify, tmp_path, "names")
    code, stdout, err = run_cli(["eval", checkpoint, "--plot", tmp_path / "names.png", "--json"])
    assert code == 0, err
    result = json.loads(stdout)
    assert (tmp_path / "names.png").read_bytes()[:8] == PNG
    ax = checkpoint_figure(checkpoint, split="val", device="cpu").axes[0]
    matrix = result["confusion_matrix"]["matrix"]
    shown = {(round(t.get_position()[1]), round(t.get_position()[0])): int(t.get_text()) for t in ax.texts}
    assert shown == {(i, j): v for i, row in enumerate(matrix) for j, v in enumerate(row)}
    assert [t.get_text() for t in ax.get_yticklabels()] == result["confusion_matrix"]["labels"]


def test_the_calls_for_each_tasks_on_evaluation(tmp_path, text_file, monkeypatch):
    """What each task's on_evaluation does to send its figure to TensorBoard, run on real task objects."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from grutrain.tasks import load_config
    from grutrain.trainer.metrics import MetricsLogger
    from grutrain.tasks import training_task
    from grutrain.commands.init import starter_text

    monkeypatch.chdir(REPO)
    device = torch.device("cpu")
    metrics = MetricsLogger(tmp_path / "tb")

    def task_for(name, overrides):
        path = tmp_path / f"{name}.yaml"
        path.write_text(starter_text(name))
        cfg = load_config(path, overrides)
        task = training_task(cfg, rows_per_step=cfg.train.batch_size)
        model = task.build_model()
        task.evaluate(model, "val", device)  # as fit does before on_evaluation (classify keeps its confusion)
        task.on_evaluation(model, device, 10, metrics)
        return task

    task_for("lm", [f"data.path={text_file}", "model.hidden_size=8", "data.seq_len=8", "sample.length=5"])
    task_for("forecast", ["model.hidden_size=4"])
    task_for("classify", ["model.hidden_size=4", "model.embedding_dim=4"])

    metrics.close()
    accumulator = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    accumulator.Reload()
    assert set(accumulator.Tags()["images"]) == {"val/loss_by_position", "val/forecast", "val/confusion_matrix"}
