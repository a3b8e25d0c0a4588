"""Config: YAML + dotted overrides -> a validated Config, or a GrutrainError naming the key."""

from __future__ import annotations

import string

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grutrain.config.schema import Config
from grutrain.tasks import load_config, validate_config
from grutrain.tasks.lm.config import LMConfig
from grutrain.errors import GrutrainError


@pytest.fixture
def yaml_file(tmp_path):
    """yaml_file(text) -> path of a config file holding exactly that text."""

    def write(text: str, name: str = "c.yaml"):
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


def error_of(path, overrides=()) -> str:
    with pytest.raises(GrutrainError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message.strip(), "a user-facing error should be one line"
    return message


# --------------------------------------------------------------------------- loading


def test_yaml_loads_with_defaults_for_missing_keys(yaml_file):
    cfg = load_config(yaml_file("data:\n  path: corpus.txt\nmodel:\n  hidden_size: 32\n"))
    assert isinstance(cfg, Config)
    assert cfg.data.path == "corpus.txt"
    assert cfg.model.hidden_size == 32
    # Everything not written keeps the documented defaults.
    assert cfg.task == "lm"
    assert cfg.model.num_layers == 1
    assert cfg.model.reset == "after"
    assert cfg.model.backend == "custom"
    assert cfg.optim.name == "adamw"
    assert cfg.optim.lr == 3e-3
    assert cfg.data.seq_len == 64
    assert cfg.train.batch_size == 64
    assert cfg.train.device == "auto"
    assert cfg.run.dir is None


def test_empty_yaml_is_all_defaults(yaml_file):
    assert load_config(yaml_file("")) == LMConfig()
    assert load_config(yaml_file("# only a comment\n")) == LMConfig()


def test_yaml_scientific_notation_without_dot_is_a_float(yaml_file):
    # PyYAML (YAML 1.1) would read `3e-4` as a string.
    cfg = load_config(yaml_file("optim:\n  lr: 3e-4\n"))
    assert isinstance(cfg.optim.lr, float)
    assert cfg.optim.lr == 0.0003


# --------------------------------------------------------------------------- overrides


@pytest.mark.parametrize(
    "override, section, key, expected, kind",
    [
        ("optim.lr=0.01", "optim", "lr", 0.01, float),
        ("optim.lr=3e-4", "optim", "lr", 0.0003, float),
        ("optim.lr=1", "optim", "lr", 1.0, float),
        ("model.hidden_size=64", "model", "hidden_size", 64, int),
        ("model.num_layers=3", "model", "num_layers", 3, int),
        ("data.seq_len=16", "data", "seq_len", 16, int),
        ("data.lowercase=true", "data", "lowercase", True, bool),
        ("data.lowercase=false", "data", "lowercase", False, bool),
        ("model.reset=before", "model", "reset", "before", str),
        ("train.device=cpu", "train", "device", "cpu", str),
        ("run.dir=runs/sweep/a", "run", "dir", "runs/sweep/a", str),
        ("sample.prompt=Once upon", "sample", "prompt", "Once upon", str),
    ],
)
def test_override_converted_to_field_type(yaml_file, override, section, key, expected, kind):
    cfg = load_config(yaml_file("model:\n  hidden_size: 32\n"), [override])
    value = getattr(getattr(cfg, section), key)
    assert type(value) is kind
    assert value == expected


def test_override_null_disables_grad_clip(yaml_file):
    assert load_config(yaml_file(""), []).optim.grad_clip == 1.0
    assert load_config(yaml_file(""), ["optim.grad_clip=null"]).optim.grad_clip is None


def test_override_wins_over_yaml_and_later_override_wins(yaml_file):
    path = yaml_file("optim:\n  lr: 0.5\nmodel:\n  hidden_size: 32\n")
    cfg = load_config(path, ["optim.lr=0.02", "model.hidden_size=16", "model.hidden_size=24"])
    assert cfg.optim.lr == 0.02
    assert cfg.model.hidden_size == 24


def test_override_creates_missing_section(yaml_file):
    cfg = load_config(yaml_file("task: lm\n"), ["model.hidden_size=12"])
    assert cfg.model.hidden_size == 12


def test_override_of_list_field(yaml_file):
    cfg = load_config(yaml_file(""), ["optim.betas=[0.8, 0.95]"])
    assert cfg.optim.betas == (0.8, 0.95)


@pytest.mark.parametrize("override, section, key, expected", [
    ("run.name=2024", "run", "name", "2024"),
    ("data.path=2024", "data", "path", "2024"),
])
def test_numeric_override_of_string_field_is_a_string(yaml_file, override, section, key, expected):
    cfg = load_config(yaml_file(""), [override])
    assert getattr(getattr(cfg, section), key) == expected


# --------------------------------------------------------------------------- errors naming the key


def test_misspelled_key_in_override_suggests_the_right_one(yaml_file):
    message = error_of(yaml_file(""), ["model.hiden_size=64"])
    assert "model.hiden_size" in message
    assert "model.hidden_size" in message.replace("model.hiden_size", "")


def test_misspelled_key_in_yaml_suggests_the_right_one(yaml_file):
    message = error_of(yaml_file("model:\n  hiden_size: 64\n"))
    assert "model.hiden_size" in message
    assert "model.hidden_size" in message.replace("model.hiden_size", "")


def test_unknown_top_level_section(yaml_file):
    message = error_of(yaml_file("modle:\n  hidden_size: 64\n"))
    assert "modle" in message
    assert "model" in message.replace("modle", "")
    message = error_of(yaml_file("schedule:\n  steps: 3\n"))
    assert "schedule" in message
    # No close match: the known sections are listed instead.
    for section in ("data", "model", "optim", "train", "run"):
        assert section in message


@pytest.mark.parametrize("override, key", [
    ("model.hidden_size=abc", "model.hidden_size"),
    ("model.hidden_size=64.5", "model.hidden_size"),
    ("optim.lr=fast", "optim.lr"),
    ("optim.lr=", "optim.lr"),
    ("data.lowercase=maybe", "data.lowercase"),
    ("model.reset=sideways", "model.reset"),
    ("model.backend=cudnn", "model.backend"),
    ("train.device=tpu", "train.device"),
    ("task=vision", "task"),
    ("optim.betas=0.9", "optim.betas"),
    ("model=3", "model"),
])
def test_wrong_type_names_the_key(yaml_file, override, key):
    message = error_of(yaml_file(""), [override])
    assert key in message


def test_wrong_type_in_yaml_names_the_key(yaml_file):
    message = error_of(yaml_file("train:\n  batch_size: [1, 2]\n"))
    assert "train.batch_size" in message


def test_literal_error_lists_allowed_values(yaml_file):
    message = error_of(yaml_file(""), ["model.reset=sideways"])
    assert "after" in message and "before" in message


def test_boolean_for_integer_field_is_refused(yaml_file):
    error_of(yaml_file(""), ["model.hidden_size=true"])


@pytest.mark.parametrize("override, key", [
    ("model.hidden_size=0", "model.hidden_size"),
    ("model.hidden_size=-8", "model.hidden_size"),
    ("model.num_layers=0", "model.num_layers"),
    ("optim.lr=0", "optim.lr"),
    ("optim.lr=-0.001", "optim.lr"),
    ("optim.lr=.nan", "optim.lr"),
    ("model.dropout=1.5", "model.dropout"),
    ("model.dropout=-0.1", "model.dropout"),
    ("data.seq_len=0", "data.seq_len"),
    ("train.batch_size=0", "train.batch_size"),
    ("train.max_steps=-1", "train.max_steps"),
    ("optim.grad_clip=0", "optim.grad_clip"),
    ("optim.betas=[0.9, 1.0]", "optim.betas"),
])
def test_impossible_values_name_the_key(yaml_file, override, key):
    message = error_of(yaml_file(""), [override])
    assert key in message


def test_infinite_learning_rate_is_refused(yaml_file):
    assert "optim.lr" in error_of(yaml_file(""), ["optim.lr=.inf"])


def test_val_and_test_fractions_must_leave_training_data(yaml_file):
    message = error_of(yaml_file("data:\n  val_fraction: 0.5\n  test_fraction: 0.45\n"))
    assert "data.val_fraction" in message and "data.test_fraction" in message
    # Just below the limit is fine.
    cfg = load_config(yaml_file("data:\n  val_fraction: 0.4\n  test_fraction: 0.4\n"))
    assert cfg.data.val_fraction == 0.4


def test_torch_backend_with_reset_before_is_refused(yaml_file):
    message = error_of(yaml_file("model:\n  backend: torch\n"), ["model.reset=before"])
    assert "model.backend" in message and "reset" in message
    # Each on its own is fine.
    assert load_config(yaml_file(""), ["model.backend=torch"]).model.backend == "torch"
    assert load_config(yaml_file(""), ["model.reset=before"]).model.reset == "before"


def test_invalid_yaml_reports_line_number(yaml_file):
    path = yaml_file("model:\n  hidden_size: 8\n  num_layers: 1\n    dropout: 0.1\n")
    message = error_of(path)
    assert str(path) in message
    assert "line 4" in message


def test_invalid_yaml_in_override_is_an_error(yaml_file):
    message = error_of(yaml_file(""), ["model.hidden_size=[1, 2"])
    assert "model.hidden_size" in message


def test_yaml_that_is_not_a_mapping(yaml_file):
    message = error_of(yaml_file("- 1\n- 2\n"))
    assert "mapping" in message


def test_python_tags_are_refused_not_executed(yaml_file, tmp_path):
    target = tmp_path / "PWNED"
    path = yaml_file(f"model: !!python/object/apply:os.system ['touch {target}']\n")
    error_of(path)
    assert not target.exists()


def test_missing_config_file(tmp_path):
    path = tmp_path / "nope.yaml"
    message = error_of(path)
    assert str(path) in message
    assert "not found" in message


def test_config_path_is_a_directory(tmp_path):
    message = error_of(tmp_path)
    assert str(tmp_path) in message
    assert "directory" in message


def test_config_file_not_utf8(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("run:\n  name: caf\xe9\n".encode("latin-1"))
    assert str(path) in error_of(path)


@pytest.mark.parametrize("override", ["optim.lr", "optim.lr:0.1", "=3", "model..hidden_size=3", ".lr=3"])
def test_override_without_key_equals_value(yaml_file, override):
    message = error_of(yaml_file(""), [override])
    assert override in message
    assert "key=value" in message


def test_override_into_a_scalar_is_an_error(yaml_file):
    message = error_of(yaml_file("model: 5\n"), ["model.hidden_size=8"])
    assert "model" in message


# --------------------------------------------------------------------------- --print-config


def test_print_config_round_trips_and_creates_nothing(write_config, run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_config(run_dir=None)
    overrides = ["optim.lr=3e-4", "model.hidden_size=12", "optim.grad_clip=null", "data.lowercase=true"]
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = run_cli(["fit", path, *overrides, "--print-config"])
    assert code == 0, err
    printed = validate_config(yaml.safe_load(out))
    assert printed == load_config(path, overrides)
    assert printed.optim.lr == 0.0003 and printed.optim.grad_clip is None and printed.data.lowercase is True
    assert not (tmp_path / "runs").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# --------------------------------------------------------------------------- property


_FIELDS = {
    "task": None,
    "data": ["path", "tokenizer", "lowercase", "seq_len", "sampling", "val_fraction", "test_fraction", "min_freq"],
    "model": ["embedding_dim", "hidden_size", "num_layers", "dropout", "reset", "backend"],
    "optim": ["name", "lr", "weight_decay", "betas", "momentum", "grad_clip", "schedule", "warmup_steps"],
    "train": ["max_steps", "epochs", "batch_size", "eval_every", "seed", "device", "precision", "threads"],
    "run": ["dir", "name"],
}
_DOTTED = [s if f is None else f"{s}.{k}" for s, f in _FIELDS.items() for k in (f or [None])]

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**30, 10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["after", "before", "torch", "custom", "cpu", "lm", "char", "adamw", "1e-3", "null"]),
)
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)), max_leaves=6)
_keys = st.one_of(st.sampled_from(list(_FIELDS)), st.text(max_size=8))
_documents = st.one_of(
    # Structured documents: near-valid configs with random values.
    st.dictionaries(_keys, st.one_of(
        st.dictionaries(st.one_of(st.sampled_from(sum((f or [] for f in _FIELDS.values()), [])), st.text(max_size=8)),
                        _values, max_size=4),
        _values), max_size=4).map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
    # Arbitrary text, mostly invalid YAML.
    st.text(alphabet=string.printable + "äé\u00a0\t", max_size=80),
)
_override_values = st.one_of(
    st.text(alphabet=string.printable, max_size=15),
    # run.dir templates: runs/lr{optim.lr}
    st.builds("".join, st.lists(st.one_of(st.sampled_from(["{", "}", ":", "!r", ".", "runs/"] + _DOTTED),
                                          st.text(alphabet="abdlr0123>.<^ ", max_size=3)), max_size=5)),
    _scalars.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()),
)
_overrides = st.lists(st.one_of(
    st.builds(lambda k, v: f"{k}={v}", st.one_of(st.sampled_from(_DOTTED), st.text(max_size=10)), _override_values),
    st.text(max_size=15),
), max_size=3)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=_documents, overrides=_overrides)
def test_any_input_gives_config_or_grutrain_error(tmp_path, document, overrides):
    path = tmp_path / "random.yaml"
    path.write_text(document, encoding="utf-8")
    try:
        cfg = load_config(path, overrides)
    except GrutrainError as exc:
        assert str(exc).strip(), "the error needs a message"
    else:
        assert isinstance(cfg, Config)


def test_deeply_nested_yaml_is_a_grutrain_error(yaml_file):
    error_of(yaml_file("model: " + "[" * 5000 + "]" * 5000 + "\n"))
