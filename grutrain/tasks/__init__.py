"""Tasks: what to learn, from which data, judged by which metrics; this module is their registry.

Rule: one folder per task (tasks/<task>/) holds everything only that task reads; a task imports no
other task, and no module outside tasks/ names a task: it asks this registry. A task <name> is the
folder tasks/<name>/ with
    config.py      its config class (its `data` section and a TaskConfig subclass with `task: <name>`)
    task.py        its task class: the core protocol of tasks/protocols.py and the abilities it has
    template.yaml  the starter config `grutrain init <name>` writes
and one line in TASKS below.

The training loop asks `training_task` for the task object of a config; every command that reads a
checkpoint asks tasks/checkpoints.py's `open_checkpoint`. Both import a task's modules only when it
is asked for, and this module imports neither torch nor pydantic at the top: the CLI reads the task
names from here to build `grutrain init`'s choices, and `grutrain --help` stays quick.
"""

from __future__ import annotations

import importlib
from importlib import resources
from typing import TYPE_CHECKING

from grutrain.errors import GrutrainError

if TYPE_CHECKING:
    from grutrain.config.schema import Config, TaskConfig
    from grutrain.tasks.protocols import Task

# One line per task: its name (the config's `task:` key and its folder), its config class, its task class.
TASKS: dict[str, tuple[str, str]] = {
    "lm": ("LMConfig", "LanguageModelTask"),
    "forecast": ("ForecastConfig", "ForecastTask"),
    "classify": ("ClassifyConfig", "ClassifyTask"),
    "synthetic": ("SyntheticConfig", "SyntheticTask"),
}
DEFAULT_TASK = "lm"  # a config without `task:`


def task_names() -> tuple[str, ...]:
    return tuple(TASKS)


def _from_folder(name: str, module: str, attribute: str):
    return getattr(importlib.import_module(f"{__name__}.{name}.{module}"), attribute)


def task_class(name: str) -> type[Task]:
    return _from_folder(name, "task", TASKS[name][1])


def config_class(name: str) -> type[TaskConfig]:
    return _from_folder(name, "config", TASKS[name][0])


def template(name: str) -> str:
    """The starter config of a task, as its folder holds it (package data, so an installed grutrain has it)."""
    return resources.files(f"{__name__}.{name}").joinpath("template.yaml").read_text(encoding="utf-8")


def config_class_of(raw: dict) -> type[TaskConfig]:
    """The config class a config dict's `task:` names (DEFAULT_TASK when it names none)."""
    name = raw.get("task", DEFAULT_TASK)
    if not isinstance(name, str) or name not in TASKS:
        from grutrain.config.text import excerpt

        raise GrutrainError(f"task: {excerpt(name)} is not a task; expected one of {', '.join(TASKS)}")
    return config_class(name)


def validate_config(raw: dict) -> Config:
    """A config dict (a YAML's, or a checkpoint's) checked against its task's config class."""
    from grutrain.config.schema import validate_as

    return validate_as(config_class_of(raw), raw)


def load_config(path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config, apply `key=value` overrides and validate the result."""
    from grutrain.config.schema import apply_override, read_config

    raw = read_config(path)
    for item in overrides:
        apply_override(raw, item, _override_class(raw))
    return validate_config(raw)


def _override_class(raw: dict) -> type[TaskConfig]:
    # Which keys are text (`run.name=007` stays "007"); an unknown task is refused by validation later.
    name = raw.get("task", DEFAULT_TASK)
    return config_class(name if isinstance(name, str) and name in TASKS else DEFAULT_TASK)


def training_task(cfg: Config, *, rows_per_step: int, saved: dict | None = None, rank: int = 0,
                  world_size: int = 1) -> Task:
    """The task of a config, ready to train: data read, split, and a sampler drawing `rows_per_step`
    rows of each optimizer step on this process (`saved`: the checkpoint being resumed, if any)."""
    return task_class(cfg.task).from_config(cfg, rows_per_step=rows_per_step, saved=saved, rank=rank,
                                            world_size=world_size)
