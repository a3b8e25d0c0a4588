"""The metric `fit` logs for a checkpoint is the metric `grutrain eval` prints for it, to the last digit,
whatever the batch size, gradient accumulation or number of processes the run trained with."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

TEXT = ("'Curiouser and curiouser!' cried Alice (she was so much surprised, that for the moment "
        "she quite forgot how to speak good English). ") * 30


def write_lm_config(tmp_path, **train) -> object:
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    config = {
        "data": {"path": str(text), "seq_len": 8, "val_fraction": 0.2, "test_fraction": 0.1},
        "model": {"embedding_dim": 8, "hidden_size": 16},
        "optim": {"lr": 0.01},
        "train": {"max_steps": 6, "batch_size": 4, "eval_every": 3, "checkpoint_every": 3, "log_every": 1,
                  "device": "cpu", "threads": 1, "dist_timeout_s": 60, **train},
        "sample": {"length": 0},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def logged(run_dir, tag: str, step: int) -> float:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return next(m["value"] for m in lines if m["tag"] == tag and m["step"] == step)


def eval_json(run_cli, checkpoint, *args) -> dict:
    code, out, err = run_cli(["eval", checkpoint, "--json", *args])
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_lm_eval_equals_the_logged_val_loss(tmp_path, run_cli, accumulate):
    config = write_lm_config(tmp_path, batch_size=4 // accumulate, accumulate=accumulate)
    run_dir = tmp_path / "run"
    code, _, err = run_cli(["fit", config, f"run.dir={run_dir}", "-q"])
    assert code == 0, err
    result = eval_json(run_cli, run_dir / "checkpoints" / "last.pt")
    assert result["step"] == 6
    for metric in ("loss", "perplexity", "bpc"):
        assert result[metric] == logged(run_dir, f"val/{metric}", 6)  # exactly: the same computation
    summary = json.loads((run_dir / "summary.json").read_text())
    assert eval_json(run_cli, run_dir / "checkpoints" / "last.pt", "--split", "test")["loss"] == \
        summary["final"]["test/loss"]


def test_lm_eval_equals_the_logged_val_loss_under_torchrun(tmp_path, run_cli):
    config = write_lm_config(tmp_path, batch_size=2)  # 2 processes x 2 rows: a global batch of 4
    run_dir = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               "-m", "grutrain", "fit", str(config), f"run.dir={run_dir}", "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = eval_json(run_cli, run_dir / "checkpoints" / "last.pt")
    assert evaluated["loss"] == logged(run_dir, "val/loss", 6)


def test_forecast_eval_equals_the_logged_metrics(tmp_path, run_cli):
    rows = ["t,y"] + [f"{i},{(i % 7) + 0.1 * i}" for i in range(120)]
    (tmp_path / "series.csv").write_text("\n".join(rows) + "\n")
    config = {"task": "forecast",
              "data": {"path": str(tmp_path / "series.csv"), "target_columns": ["y"], "time_column": "t",
                       "input_len": 8, "horizon": 2, "season": 7},
              "model": {"hidden_size": 8},
              "train": {"max_steps": 4, "batch_size": 4, "accumulate": 2, "eval_every": 4, "checkpoint_every": 4,
                        "device": "cpu"},
              "run": {"dir": str(tmp_path / "run")}}
    path = tmp_path / "forecast.yaml"
    path.write_text(yaml.safe_dump(config))
    code, _, err = run_cli(["fit", path, "-q"])
    assert code == 0, err
    result = eval_json(run_cli, tmp_path / "run" / "checkpoints" / "last.pt")
    for metric in ("loss", "mae", "rmse"):
        assert result[metric] == logged(tmp_path / "run", f"val/{metric}", 4)
    # sMAPE is averaged per series then over series; eval's report sums the same terms in another order
    assert result["smape"] == pytest.approx(logged(tmp_path / "run", "val/smape", 4), rel=1e-12)
