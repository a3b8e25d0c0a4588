"""The task registry and the task protocols: a task is one folder plus one registry line, nothing outside
grutrain/tasks/ names a task, every task has the core, and a command a task cannot serve is refused by
the same one-line check everywhere."""

from __future__ import annotations

import ast
import json
import tomllib
from pathlib import Path

import pytest
import torch

from grutrain.errors import GrutrainError
from grutrain.tasks import TASKS, config_class, task_class, task_names, template, validate_config
from grutrain.tasks.protocols import (Exports, Figures, PreparesAhead, Predicts, Relocates, Samples, Task,
                                      has_ability, require)

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "grutrain"
V2 = REPO / "tests" / "fixtures" / "v2"


def _string_literals(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node


def test_no_module_outside_a_task_folder_names_a_task():
    """Only the registry (grutrain/tasks/__init__.py) and each task's own folder say "lm", "forecast", ...:
    everything else asks the registry or tests for an ability."""
    task_folders = [PACKAGE / "tasks" / name for name in TASKS]
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "tasks" / "__init__.py" or any(folder in path.parents for folder in task_folders):
            continue
        found += [f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}"
                  for node in _string_literals(path) if node.value in TASKS]
    assert not found, "a task named outside its folder and the registry:\n" + "\n".join(found)


@pytest.mark.parametrize("name", task_names())
def test_a_task_is_its_folder(name):
    cfg_cls, cls = config_class(name), task_class(name)
    assert cls.name == name
    assert cls.__module__ == f"grutrain.tasks.{name}.task" and cfg_cls.__module__ == f"grutrain.tasks.{name}.config"
    assert cfg_cls.model_fields["task"].annotation.__args__ == (name,)  # `task: <name>` picks it
    assert "{config}" in template(name)  # the starter config init writes


def test_the_independence_contract_names_every_task():
    """A new task joins "a task imports no other task" (pyproject.toml) when it joins the registry."""
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    independent = next(c for c in contracts if c["type"] == "independence")
    assert sorted(independent["modules"]) == sorted(f"grutrain.tasks.{name}" for name in TASKS), \
        "list every task's folder in the independence contract of pyproject.toml"


@pytest.mark.parametrize("name,expected", [
    ("lm", {"Samples", "Figures", "Exports", "Relocates", "PreparesAhead"}),
    ("forecast", {"Predicts", "Figures", "Exports"}),
    ("classify", {"Predicts", "Figures", "Exports"}),
    ("synthetic", {"Exports"}),
])
def test_what_each_task_can_do(name, expected):
    abilities = (Predicts, Samples, Figures, Exports, Relocates, PreparesAhead)
    assert {a.__name__ for a in abilities if has_ability(task_class(name), a)} == expected


def test_a_built_task_has_the_core():
    cfg = validate_config({"task": "synthetic", "data": {"train_size": 8, "val_size": 4, "test_size": 4,
                                                         "seq_len": 5}})
    task = task_class("synthetic").from_config(cfg, rows_per_step=4)
    assert isinstance(task, Task) and isinstance(task, Exports) and not isinstance(task, Predicts)


def test_require_says_which_tasks_can_in_one_line():
    require(task_class("forecast"), Predicts, "predict")  # it can: nothing happens
    with pytest.raises(GrutrainError) as one:
        require(task_class("synthetic"), Predicts, "predict")
    assert str(one.value) == "task synthetic has no predict (tasks forecast and classify have one)"
    with pytest.raises(GrutrainError) as two:
        require(task_class("classify"), Samples, "sample")
    assert str(two.value) == "task classify has no sample (task lm has one)"


def test_commands_a_task_cannot_serve_are_refused_in_one_line(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    code, out, err = run_cli(["sample", V2 / "forecast.pt", "--length", "5"])
    assert code == 1 and out == ""
    assert err == f"error: {V2 / 'forecast.pt'}: task forecast has no sample (task lm has one)\n"
    config = tmp_path / "forecast.yaml"
    config.write_text(template("forecast"))
    code, out, err = run_cli(["prepare", config])
    assert code == 1 and err == "error: task forecast has no prepare (task lm has one)\n"


def _as_version_1(payload: dict, task_state_key: str | None) -> dict:
    """A version-2 payload in the version-1 layout: the loop's and the task's state at the top level (or
    the task's under its own key), the language model's sampling settings in every config's train section."""
    v1 = {k: v for k, v in payload.items() if k not in ("trainer", "task_state")}
    v1.update(payload["trainer"])
    v1.update({task_state_key: payload["task_state"]} if task_state_key else payload["task_state"])
    v1["config"] = {**payload["config"], "train": {**payload["config"]["train"], "sample_length": 200,
                                                   "sample_prompt": "Alice "}}
    v1["format_version"] = 1
    return v1


@pytest.mark.parametrize("task,state_key", [("classify", "classify"), ("forecast", None)])
def test_version_1_files_of_other_tasks_evaluate_as_their_version_2_twins(run_cli, tmp_path, monkeypatch, task,
                                                                          state_key):
    """Version 1 nested classify's state under "classify", and every task's train section had
    sample_length and sample_prompt: each task reads its own old keys."""
    monkeypatch.chdir(REPO)
    old = tmp_path / f"{task}-v1.pt"
    torch.save(_as_version_1(torch.load(V2 / f"{task}.pt", weights_only=True), state_key), old)
    results = []
    for path in (V2 / f"{task}.pt", old):
        code, out, err = run_cli(["eval", path, "--json"])
        assert code == 0, err
        results.append({k: v for k, v in json.loads(out).items() if k != "checkpoint"})
    assert results[0] == results[1]
