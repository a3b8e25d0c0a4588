"""grutrain init: the starter configs validate, match the shipped configs they come from, build their
task on the shipped data (the lm one trains), and an existing file is never overwritten."""

from __future__ import annotations

from pathlib import Path

import pytest

from grutrain.config.schema import config_to_dict
from grutrain.tasks import load_config
from grutrain.commands.init import TASKS, starter_text

REPO = Path(__file__).resolve().parents[2]
SHIPPED = {"lm": "charlm.yaml", "forecast": "sunspots.yaml", "classify": "names.yaml", "synthetic": "adding.yaml"}


@pytest.mark.parametrize("task", TASKS)
def test_init_writes_a_commented_config_that_validates(task, tmp_path, run_cli):
    out = tmp_path / f"my-{task}.yaml"
    code, stdout, err = run_cli(["init", task, "--output", out])
    assert code == 0, err
    assert f"grutrain fit {out}" in stdout
    text = out.read_text(encoding="utf-8")
    assert text == starter_text(task, str(out))
    assert text.startswith("#") and f"# Run:       grutrain fit {out}" in text and "{config}" not in text
    cfg = load_config(out)
    assert cfg.task == task
    # The same settings as the shipped config it starts from (configs/ is the reference).
    shipped = REPO / "configs" / SHIPPED[task]
    if shipped.exists():
        assert config_to_dict(cfg) == config_to_dict(load_config(shipped)), \
            f"grutrain/templates/{task}.yaml has drifted from configs/{SHIPPED[task]}; make them agree"


def test_default_output_and_no_overwrite(tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["init", "synthetic"])
    assert code == 0, err
    written = (tmp_path / "synthetic.yaml").read_text()
    (tmp_path / "lm.yaml").write_text("mine\n")
    code, out, err = run_cli(["init", "lm"])
    assert code == 1 and "already exists" in err and "Traceback" not in err
    assert (tmp_path / "lm.yaml").read_text() == "mine\n"
    code, _, err = run_cli(["init", "synthetic", "--output", "synthetic.yaml"])
    assert code == 1 and (tmp_path / "synthetic.yaml").read_text() == written
    code, _, err = run_cli(["init", "speech"])
    assert code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lm.yaml", "synthetic.yaml"]


def test_a_note_when_the_shipped_data_is_not_here(tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["init", "classify"])
    assert code == 0 and "data/names.jsonl" in err and "not here" in err
    monkeypatch.chdir(REPO)
    code, _, err = run_cli(["init", "classify", "--output", tmp_path / "c.yaml"])
    assert code == 0 and err == ""


@pytest.mark.parametrize("task,overrides", [
    ("forecast", []),
    ("classify", []),
    ("synthetic", ["data.train_size=64", "data.val_size=8", "data.test_size=8"]),
])
def test_starters_build_their_task_on_the_shipped_data(task, overrides, tmp_path, monkeypatch):
    from grutrain.tasks import training_task

    monkeypatch.chdir(REPO)  # the starters name the shipped data relative to the checkout
    path = tmp_path / f"{task}.yaml"
    path.write_text(starter_text(task))
    cfg = load_config(path, overrides)
    task_object = training_task(cfg, rows_per_step=cfg.train.batch_size)
    assert task_object.has_split("val")
    task_object.build_model()


def test_lm_starter_trains_a_few_steps(tmp_path, run_cli, monkeypatch):
    import json

    monkeypatch.chdir(REPO)
    path = tmp_path / "lm.yaml"
    path.write_text(starter_text("lm"))
    run_dir = tmp_path / "run"
    code, _, err = run_cli(["fit", path, "train.max_steps=3", "train.eval_every=3", "train.batch_size=4",
                            "data.seq_len=16", "model.hidden_size=16", "model.embedding_dim=8",
                            "sample.length=0", "train.device=cpu", f"run.dir={run_dir}", "--quiet"])
    assert code == 0, err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == 3
    assert (run_dir / "checkpoints" / "best.pt").is_file()
