"""The config's shared sections, YAML loading, dotted overrides and validation against a config class.

One pydantic model per config section. Each task's own `data` section and its TaskConfig subclass live
with the task (tasks/<task>/config.py); the task registry (grutrain.tasks) picks the class of a config
and offers load_config / validate_config, built from the functions here. Every field is checked before
any work starts: unknown keys, wrong types and impossible values raise GrutrainError naming the key and
what would be right.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from grutrain.config.text import excerpt, format_config_value, parse_yaml, resolve_run_dir_template  # noqa: F401
from grutrain.errors import GrutrainError
from grutrain.files.inputs import read_input


class Section(BaseModel):
    # Unknown keys are errors; inf/nan are never a sensible setting; `name: 2024` is a string.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False,
                              coerce_numbers_to_str=True)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        # pydantic would quietly read `hidden_size: true` as 1.
        if isinstance(data, dict):
            for key, value in data.items():
                field = cls.model_fields.get(key)
                if isinstance(value, bool) and field is not None and "bool" not in str(field.annotation):
                    raise ValueError(f"{cls.section_name}.{key}: {value!r} is a boolean; expected {_type_name(field.annotation)}")
        return data

    section_name: ClassVar[str] = "config"


def _type_name(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "")
    return getattr(annotation, "__name__", text)


class ModelConfig(Section):
    section_name: ClassVar[str] = "model"
    # Upper bounds only stop absurd counts early; what fits in memory is checked before training.
    embedding_dim: int = Field(64, ge=0, le=1 << 16, description="0 means one-hot inputs, as d2l.ai does")
    hidden_size: int = Field(256, gt=0, le=1 << 16)
    num_layers: int = Field(1, gt=0, le=256)
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout between GRU layers and before the head")
    reset: Literal["after", "before"] = "after"
    backend: Literal["custom", "torch"] = "custom"
    kernel: Literal["auto", "native", "python"] = Field(
        "auto", description="custom backend: the native C++ kernel (auto: where it can be built), or python (fused)")
    bidirectional: bool = Field(False, description="classify: read sequences in both directions")

    @model_validator(mode="after")
    def _torch_backend_limits(self) -> "ModelConfig":
        if self.backend == "torch" and self.reset == "before":
            raise ValueError(
                "model.backend=torch (torch.nn.GRU) only computes reset=after; "
                "use model.backend=custom for reset=before"
            )
        if self.backend == "torch" and self.kernel == "native":
            raise ValueError("model.kernel=native is grutrain's GRU; it needs model.backend=custom")
        return self


class OptimConfig(Section):
    section_name: ClassVar[str] = "optim"
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD only")
    grad_clip: Optional[float] = Field(1.0, gt=0, description="max gradient norm; null disables")
    schedule: Literal["constant", "cosine", "step"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine: final lr = lr * min_lr_ratio")
    step_size: int = Field(1000, gt=0, description="step schedule: decay every step_size steps")
    gamma: float = Field(0.5, gt=0, le=1, description="step schedule: multiply lr by gamma")

    @model_validator(mode="after")
    def _betas_in_range(self) -> "OptimConfig":
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError("optim.betas must be two numbers in [0, 1), e.g. [0.9, 0.999]")
        return self


class EarlyStoppingConfig(Section):
    section_name: ClassVar[str] = "train.early_stopping"
    metric: str = Field("val/loss", description="a validation metric, e.g. val/loss, val/accuracy, val/mae")
    mode: Literal["min", "max"] = Field("min", description="min: lower is better; max: higher is better")
    patience: int = Field(5, gt=0, description="evaluations without improvement before stopping")
    min_delta: float = Field(0.0, ge=0, description="a smaller change does not count as an improvement")

    @model_validator(mode="after")
    def _validation_metric(self) -> "EarlyStoppingConfig":
        if not self.metric.startswith("val/"):
            raise ValueError(f"train.early_stopping.metric {self.metric!r} must be a validation metric such as val/loss")
        return self


MAX_THREADS = max(256, 4 * (os.cpu_count() or 1))  # more would only exhaust the process table


class TrainConfig(Section):
    section_name: ClassVar[str] = "train"
    max_steps: Optional[int] = Field(2000, gt=0, description="optimizer steps; or use epochs")
    epochs: Optional[int] = Field(None, gt=0, description="passes over the training split; overrides max_steps")
    batch_size: int = Field(64, gt=0, le=1 << 20)
    accumulate: int = Field(1, gt=0, description="micro-batches of batch_size per optimizer step (gradient accumulation)")
    early_stopping: Optional[EarlyStoppingConfig] = Field(None, description="stop when a validation metric stalls")
    eval_every: int = Field(250, gt=0, description="evaluate on the validation split every N steps")
    checkpoint_every: int = Field(500, gt=0, description="write checkpoints/last.pt every N steps")
    keep_last: int = Field(0, ge=0, description="also keep the K latest periodic checkpoints as step-N.pt")
    max_bad_steps: int = Field(
        10, gt=0, description="stop after this many steps in a row with a non-finite loss or gradient"
    )
    log_every: int = Field(10, gt=0)
    seed: int = Field(0, ge=0, lt=2**63 - 1)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="bf16/fp16 autocast on CUDA; bf16 also on CPUs with native bfloat16")
    threads: Optional[int] = Field(None, gt=0, le=MAX_THREADS, description="torch CPU threads; null keeps torch's default")
    dist_timeout_s: float = Field(
        600, gt=0, description="under torchrun: how long a rank waits for the others before giving up"
    )
    allow_data_change: bool = Field(
        False, description="with --resume: continue although the data file or its split sizes changed since the "
        "checkpoint (refused otherwise, naming what changed)"
    )
    eval_tokens: Optional[int] = Field(
        262_144, gt=0, description="lm: tokens each in-training validation reads (a fixed seeded subset); "
        "null = the whole split. The last evaluation of fit and `grutrain eval` always read the whole split"
    )

    @model_validator(mode="after")
    def _a_length(self) -> "TrainConfig":
        if self.max_steps is None and self.epochs is None:
            raise ValueError("give train.max_steps or train.epochs (a positive integer) to say how long to train")
        return self


MAX_RUN_NAME = 100
RUN_NAME_RE = re.compile(r"[\w+=-][\w.+=-]*")


class RunConfig(Section):
    section_name: ClassVar[str] = "run"
    dir: Optional[str] = Field(None, description="run directory; default runs/<name>-N, a fresh one per run")
    name: str = Field("run", min_length=1, description="a plain name: runs go to runs/<name>-N")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        # It becomes a directory name: no separators, no `.`/`..`, nothing a file system refuses.
        if len(name) > MAX_RUN_NAME or not RUN_NAME_RE.fullmatch(name):
            raise ValueError(f"run.name {excerpt(name)} must be a plain name of at most {MAX_RUN_NAME} letters, "
                             "digits, '.', '_', '+', '=' or '-', not starting with '.'; e.g. run.name=charlm "
                             "(use run.dir for a path)")
        return name


class TaskConfig(Section):
    """What every task's config has besides its data section."""

    task: str
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    run: RunConfig = RunConfig()

    # {"old.key": "new.key" or None}: keys of earlier versions that live elsewhere now (None: nowhere,
    # for this task). A YAML that uses one is told the new key; a checkpoint's config has them moved (or
    # dropped) when it is loaded (move_keys). Version 1's train section had the sampling settings of
    # language models in every task's config; a task that samples maps them to its own keys.
    moved_keys: ClassVar[dict[str, Optional[str]]] = {"train.sample_length": None, "train.sample_prompt": None}

    @model_validator(mode="after")
    def _fill_run_dir_template(self) -> "TaskConfig":
        # After overrides, so `runs/lr{optim.lr}` names the value this run really uses.
        if self.run.dir is not None and "{" in self.run.dir:
            self.run.dir = resolve_run_dir_template(self.run.dir, self.model_dump(mode="json"))
        return self


Config = TaskConfig  # any task's config


MAX_CONFIG_BYTES = 1 << 20


def read_config(path: str | Path) -> dict:
    """The mapping a YAML config file holds (before overrides and validation)."""
    path = Path(path)
    if not path.exists() or path.is_dir():
        hint = "it is a directory" if path.is_dir() else "no such file"
        raise GrutrainError(f"config file {str(path)!r} not found ({hint}); give the path to a YAML file such as configs/charlm.yaml")
    raw_bytes = read_input(path, "config file")  # a regular file: not a FIFO or a device
    if len(raw_bytes) > MAX_CONFIG_BYTES:
        raise GrutrainError(f"config file {str(path)!r} is {len(raw_bytes)} bytes; a config is at most "
                            f"{MAX_CONFIG_BYTES} bytes: give the YAML config, not a data file")
    try:
        text = raw_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GrutrainError(f"cannot read config {str(path)!r}: not UTF-8 (bad byte at offset {exc.start}); "
                            "save it as UTF-8") from None
    raw = parse_yaml(text, str(path))
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise GrutrainError(f"{path}: the config must be a mapping of sections (task, data, model, optim, train, run)")
    return raw


def apply_override(raw: dict, item: str, config_cls: type[TaskConfig]) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (so `0.1` is a float) unless
    config_cls says the key is text."""
    key, sep, value_text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise GrutrainError(f"override {excerpt(item)} is not of the form key=value (e.g. optim.lr=0.003)")
    parts = key.split(".")
    if _is_text_field(parts, config_cls) and value_text.strip() not in ("null", "~"):
        value = value_text  # `run.name=007` stays "007", not the number 7
    else:
        value = parse_yaml(value_text, f"override {key}") if value_text.strip() else ""
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise GrutrainError(f"override {excerpt(item)}: {excerpt('.'.join(parts[: i + 1]))} is not a section")
        node = child
    node[parts[-1]] = value


def _is_text_field(parts: list[str], config_cls: type[TaskConfig]) -> bool:
    model: Any = config_cls
    for part in parts:
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return False
        model = field.annotation
    return model in (str, Optional[str])


def validate_as(config_cls: type[TaskConfig], raw: dict) -> Config:
    """`raw` as a config of class config_cls, or a one-line GrutrainError naming the key."""
    try:
        return config_cls.model_validate(raw)
    except ValidationError as exc:
        raise GrutrainError(_describe(exc.errors()[0], config_cls)) from None


def move_keys(config: dict, moved: dict[str, Optional[str]]) -> dict:
    """A config dict with the keys of earlier versions in their new places (`moved`: a moved_keys table)."""
    config = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    for old, new in moved.items():
        section, _, key = old.partition(".")
        if isinstance(config.get(section), dict) and key in config[section]:
            value = config[section].pop(key)
            if new is not None:
                new_section, _, new_key = new.partition(".")
                config.setdefault(new_section, {})[new_key] = value
    return config


def _describe(error: dict, config_cls: type[TaskConfig]) -> str:
    """One line naming the key and what would be right, from a pydantic error."""
    loc = [str(p) for p in error["loc"] if not isinstance(p, int)]
    key = excerpt(".".join(loc))[1:-1] or "config"
    kind = error["type"]
    if kind == "extra_forbidden":
        if config_cls.moved_keys.get(key):
            return f"config key {key!r} has moved: write {config_cls.moved_keys[key]!r} instead"
        parent = loc[:-1]
        section = config_cls
        for name in parent:
            field = section.model_fields.get(name)
            section = field.annotation if field is not None else None
            if not (isinstance(section, type) and issubclass(section, BaseModel)):
                section = None
                break
        known = list(section.model_fields) if section is not None else []
        close = difflib.get_close_matches(loc[-1][:100], known, n=1)
        hint = f"did you mean {'.'.join(parent + close)!r}?" if close else f"known keys: {', '.join(known)}"
        return f"unknown config key {key!r}; {hint}"
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        return f"{key}: {excerpt(error['input'])} is not allowed; expected {expected}"
    if kind == "value_error" and key == "config":
        return str(error["msg"]).removeprefix("Value error, ")
    if kind == "value_error":
        return str(error["msg"]).removeprefix("Value error, ")
    msg = error["msg"]
    return f"{key}: {msg} (got {excerpt(error.get('input'))})"


def flatten_config(tree: dict, prefix: str = "") -> dict:
    """{"optim": {"lr": 0.1}} -> {"optim.lr": 0.1}: a config's leaves under their dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_to_dict(config: Config) -> dict:
    return config.model_dump(mode="json")


def config_to_yaml(config: Config) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)
