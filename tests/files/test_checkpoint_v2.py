"""Version-2 checkpoints written before the package was laid out in folders (issue 19).

tests/fixtures/v2/{lm,forecast,classify}.pt are tiny 4-step runs written by grutrain at commit
4363ab4 (the last commit with every module at the top of grutrain/), each beside the config.yaml its
run wrote. The numbers below are what that code's `grutrain eval --json` printed for them; the
moved code must give the same, sample the same way and resume them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from grutrain.files.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
V2 = REPO / "tests" / "fixtures" / "v2"

# `grutrain eval FILE --json` at 4363ab4 (the pre-move layout).
BEFORE_THE_MOVE = {
    "lm": {"tokens": 195, "loss": 3.6041171342898637, "perplexity": 36.7492249003639, "bpc": 5.199641916422928},
    "forecast": {"windows": 44, "mae": 42.912315663117624, "rmse": 57.220390883292495,
                 "seasonal_naive_mae": 23.729545454545455, "mase": 1.9934911209187778},
    "classify": {"examples": 516, "loss": 0.738398551940918, "accuracy": 0.313953488372093,
                 "macro_f1": 0.31096190116937006},
}


@pytest.mark.parametrize("task", sorted(BEFORE_THE_MOVE))
def test_eval_of_a_v2_checkpoint_from_before_the_move(run_cli, monkeypatch, task):
    monkeypatch.chdir(REPO)
    code, out, err = run_cli(["eval", V2 / f"{task}.pt", "--json"])
    assert code == 0, err
    result = json.loads(out)
    assert result["task"] == task and result["step"] == 4
    for key, value in BEFORE_THE_MOVE[task].items():
        assert result[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def test_sample_from_a_v2_checkpoint_from_before_the_move(run_cli):
    code, out, err = run_cli(["sample", V2 / "lm.pt", "--prompt", "Alice", "--length", "20", "--seed", "3"])
    assert code == 0, err
    # What `grutrain sample` printed at 4363ab4 for the same file, prompt and seed.
    assert out == "AliceGNiys.OTefDnT\nAtvtWy\n"


@pytest.mark.parametrize("task", sorted(BEFORE_THE_MOVE))
def test_resume_a_v2_checkpoint_from_before_the_move(tmp_path, run_cli, monkeypatch, task):
    monkeypatch.chdir(REPO)  # the fixtures' data paths are relative to the checkout
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(V2 / f"{task}.pt", run_dir / "checkpoints" / "last.pt")
    shutil.copy(V2 / f"{task}.yaml", run_dir / "config.yaml")  # as the run wrote it
    config = yaml.safe_load((V2 / f"{task}.yaml").read_text())
    config["run"]["dir"] = str(run_dir)
    config["train"]["max_steps"] = 6
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    code, _, err = run_cli(["fit", path, "--resume", "-q"])
    assert code == 0, err
    resumed = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert resumed["trainer"]["step"] == 6
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert min(steps) >= 5 and max(steps) == 6  # it went on from step 4
