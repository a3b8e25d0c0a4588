"""The checkpoint schema (format version 2) and the version-1 files written before it.

tests/fixtures/v1/last.pt was written by grutrain before the schema changed (a tiny lm run of 4
steps on tests/fixtures/v1/corpus.txt); eval, sample and --resume must still accept it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from grutrain.files.checkpoint import FORMAT_VERSION, TOP_LEVEL_KEYS
from grutrain.tasks.checkpoints import load_checkpoint
from grutrain.tasks.checkpoints import open_checkpoint

REPO = Path(__file__).resolve().parents[2]
V1 = REPO / "tests" / "fixtures" / "v1"


def test_a_v1_file_is_upgraded_to_the_current_layout():
    raw = torch.load(V1 / "last.pt", weights_only=True)
    assert raw["format_version"] == 1 and "vocab" in raw and "step" in raw  # really the old layout
    payload = load_checkpoint(V1 / "last.pt")
    assert payload["format_version"] == FORMAT_VERSION == 2
    assert set(payload) == set(TOP_LEVEL_KEYS)
    assert payload["trainer"]["step"] == raw["step"] == 4
    assert payload["trainer"]["global_batch"] == raw["global_batch"]
    assert payload["task_state"]["vocab"] == raw["vocab"]
    assert torch.equal(payload["task_state"]["eval_tokens"]["val"], raw["eval_tokens"]["val"])
    # The language model's sampling keys moved from train to their own section.
    assert "sample_length" not in payload["config"]["train"]
    assert payload["config"]["sample"] == {"length": raw["config"]["train"]["sample_length"],
                                           "prompt": raw["config"]["train"]["sample_prompt"]}


def test_eval_of_a_v1_checkpoint(run_cli):
    code, out, err = run_cli(["eval", V1 / "last.pt", "--json"])
    assert code == 0, err
    result = json.loads(out)
    raw = torch.load(V1 / "last.pt", weights_only=True)
    assert result["step"] == 4 and result["tokens"] == len(raw["eval_tokens"]["val"]) - 1
    # The same number as the model of the v1 file evaluated by hand through the current task.
    opened = open_checkpoint(V1 / "last.pt", torch.device("cpu"))
    assert result["loss"] == opened.task.evaluate(opened.model, "val", torch.device("cpu"))["loss"]


def test_sample_from_a_v1_checkpoint(run_cli):
    code, out, err = run_cli(["sample", V1 / "last.pt", "--prompt", "Alice", "--length", "30", "--seed", "3"])
    assert code == 0, err
    assert out.startswith("Alice") and len(out.rstrip("\n")) == len("Alice") + 30
    again = run_cli(["sample", V1 / "last.pt", "--prompt", "Alice", "--length", "30", "--seed", "3"])[1]
    assert again == out


def test_resume_from_a_v1_checkpoint(tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(REPO)  # the fixture's data.path is relative to the checkout
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(V1 / "last.pt", run_dir / "checkpoints" / "last.pt")
    shutil.copy(V1 / "config.yaml", run_dir / "config.yaml")  # as the v1 run wrote it
    config = load_checkpoint(V1 / "last.pt")["config"]  # the run's own config, in today's keys
    config["run"]["dir"] = str(run_dir)
    config["train"]["max_steps"] = 6
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    code, _, err = run_cli(["fit", path, "--resume", "-q"])
    assert code == 0, err
    resumed = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert resumed["format_version"] == 2 and resumed["trainer"]["step"] == 6
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert min(steps) == 5 and max(steps) == 6  # it went on from step 4


def test_a_config_with_moved_keys_names_the_new_ones(write_config, run_cli):
    code, _, err = run_cli(["fit", write_config(), "train.sample_length=0"])
    assert code == 1
    assert err.strip() == "error: config key 'train.sample_length' has moved: write 'sample.length' instead"


@pytest.mark.parametrize("key", ["optimizer", "sampler", "rng"])
def test_resume_from_a_checkpoint_without_training_state_is_one_line(write_config, run_cli, tmp_path, key):
    config = write_config()
    assert run_cli(["fit", config, "-q"])[0] == 0
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    payload = torch.load(last, weights_only=True)
    del payload[key]
    torch.save(payload, last)
    before = last.read_bytes()
    code, _, err = run_cli(["fit", config, "train.max_steps=6", "--resume"])
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"no {key!r}" in err
    assert last.read_bytes() == before
