"""grutrain export: ONNX run in onnxruntime, pt2 loaded back with torch.export.load and the state
dict loaded into the README's plain torch.nn.GRU model, each compared with grutrain's own model
(the custom GRU) on inputs of another batch size and sequence length than at export."""

from __future__ import annotations

import builtins
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from grutrain.cli import main
from grutrain.config.schema import ModelConfig
from grutrain.errors import GrutrainError
from grutrain.commands.export import json_task_state
from grutrain.commands.export_formats import EXPORT_EXTRA_MESSAGE, EXPORT_SEQ, check_onnx, export_onnx, export_pt2
from grutrain.model import SequenceModel
from grutrain.tasks import task_class
from grutrain.tasks.checkpoints import open_checkpoint

from conftest import TINY_CONFIG, make_text

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parents[2]

# The "state-dict" example of docs/export.md. The test runs that page's own block when it has one
# (a ```python block defining CharGRU), so the page cannot drift from what works.
STATE_DICT_SNIPPET = '''\
import json
import torch
from torch import nn

class CharGRU(nn.Module):
    """grutrain's language model in plain PyTorch: embedding -> torch.nn.GRU -> linear head."""

    def __init__(self, vocab_size, embedding_dim, hidden_size, num_layers):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.gru = nn.GRU(embedding_dim, hidden_size, num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, tokens, hidden=None):  # tokens [batch, seq] -> logits [batch, seq, vocab]
        output, hidden = self.gru(self.embedding(tokens), hidden)
        return self.head(output), hidden

meta = json.load(open("charlm.pt.json"))
m = meta["config"]["model"]
model = CharGRU(len(meta["vocab"]), m["embedding_dim"], m["hidden_size"], m["num_layers"])
model.load_state_dict(torch.load("charlm.pt", weights_only=True))
model.eval()

ids = torch.tensor([[meta["vocab"].index(c) for c in "Alice "]])
logits, hidden = model(ids)
print(meta["vocab"][logits[0, -1].argmax()])  # the most likely next character
'''


def readme_snippet() -> str:
    readme = (REPO / "docs" / "export.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    found = [b for b in blocks if "class CharGRU" in b]
    return found[0] if found else STATE_DICT_SNIPPET


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny 2-layer language model, trained a few steps once for the module."""
    root = tmp_path_factory.mktemp("export")
    corpus = root / "corpus.txt"
    corpus.write_text(make_text(), encoding="utf-8")
    cfg = {k: dict(v) if isinstance(v, dict) else v for k, v in TINY_CONFIG.items()}
    cfg["data"]["path"] = str(corpus)
    cfg["model"]["num_layers"] = 2
    cfg["sample"] = {"length": 0}
    cfg["run"]["dir"] = str(root / "run")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    with pytest.raises(SystemExit) as info:
        main(["fit", str(config), "--quiet"])
    assert info.value.code == 0
    return root / "run" / "checkpoints" / "best.pt"


def grutrain_model(path):
    opened = open_checkpoint(path, torch.device("cpu"))
    return opened.payload, opened.model, opened.cfg


def language_model(vocab_size: int, cfg: ModelConfig) -> SequenceModel:
    return SequenceModel(cfg, vocab_size, vocab_size=vocab_size, per_step=True)


def max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def test_onnx_matches_grutrain_at_another_length(checkpoint, tmp_path, run_cli):
    out = tmp_path / "charlm.onnx"
    code, stdout, err = run_cli(["export", checkpoint, "--format", "onnx", "--output", out])
    assert code == 0, err
    assert "max |exported - grutrain|" in stdout
    graph = onnx.load(str(out))
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.graph.input}
    outputs = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in graph.graph.output}
    payload, model, cfg = grutrain_model(checkpoint)
    V, H = len(payload["task_state"]["vocab"]), cfg.model.hidden_size
    assert inputs == {"tokens": ["batch", "sequence"], "hidden": [2, "batch", H]}
    assert outputs == {"logits": ["batch", "sequence", V], "hidden_out": [2, "batch", H]}
    assert [n.op_type for n in graph.graph.node].count("GRU") == 2  # ONNX's GRU operator, one per layer

    # Another batch size and a sequence length far from the export's: the axes are really dynamic.
    batch, seq = 5, 4 * EXPORT_SEQ + 5
    gen = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, V, (batch, seq), generator=gen)
    hidden = torch.randn(2, batch, H, generator=gen)
    got = ort.InferenceSession(str(out)).run(None, {"tokens": tokens.numpy(), "hidden": hidden.numpy()})
    with torch.no_grad():
        logits, hidden_out = model(tokens, hidden)  # grutrain's custom GRU
    difference = max(max_diff(got[0], logits), max_diff(got[1], hidden_out))
    print(f"max |onnxruntime - grutrain| = {difference:.3g}")
    assert difference < 1e-4

    meta = json.loads((tmp_path / "charlm.onnx.json").read_text())
    assert meta["task"] == "lm" and meta["format"] == "onnx" and meta["reset"] == "after"
    assert meta["vocab"] == payload["task_state"]["vocab"]
    assert [i["name"] for i in meta["inputs"]] == ["tokens", "hidden"]
    assert meta["outputs"][0] == {"name": "logits", "dtype": "float32", "shape": ["batch", "sequence", V]}
    assert meta["config"] == payload["config"]
    assert meta["check"]["max_abs_difference"] < 1e-4
    assert "eval_tokens" not in meta["task_state"]  # the held-out data stays in the checkpoint


def _ort_run(path, feeds):
    return ort.InferenceSession(str(path)).run(None, {k: v.numpy() for k, v in feeds.items()})


@pytest.mark.parametrize("layers", [1, 2])
def test_onnx_reset_before_is_linear_before_reset_0(tmp_path, layers):
    torch.manual_seed(layers)
    model = language_model(13, ModelConfig(embedding_dim=0, hidden_size=8, num_layers=layers, reset="before")).eval()
    path = tmp_path / "before.onnx"
    export_onnx(model, "lm", "before", path)
    grus = [n for n in onnx.load(str(path)).graph.node if n.op_type == "GRU"]
    assert [a.i for n in grus for a in n.attribute if a.name == "linear_before_reset"] == [0] * layers
    tokens, hidden = torch.randint(0, 13, (4, 9)), torch.randn(layers, 4, 8)
    got = _ort_run(path, {"tokens": tokens, "hidden": hidden})
    with torch.no_grad():
        want, _ = model(tokens, hidden)
        after = language_model(13, ModelConfig(embedding_dim=0, hidden_size=8, num_layers=layers, reset="after"))
        after.load_state_dict(model.state_dict())
        other, _ = after.eval()(tokens, hidden)
    assert max_diff(got[0], want) < 1e-4
    assert max_diff(got[0], other) > 1e-3  # the two variants really differ on these weights


@pytest.mark.parametrize("reset,layers", [("after", 1), ("before", 2)])
def test_onnx_classifier_with_lengths_matches_custom_gru(tmp_path, reset, layers):
    """Right-padded batches with lengths, both directions: ONNX's GRU with sequence_lens."""
    torch.manual_seed(0)
    cfg = ModelConfig(embedding_dim=4, hidden_size=8, num_layers=layers, reset=reset, bidirectional=True)
    model = SequenceModel(cfg, 3, vocab_size=11).eval()
    path = tmp_path / "cls.onnx"
    export_onnx(model, "classify", reset, path)
    inputs, lengths = torch.randint(1, 11, (4, 10)), torch.tensor([10, 1, 4, 7])
    inputs[torch.arange(10) >= lengths[:, None]] = 0  # padding
    got = _ort_run(path, {"inputs": inputs, "lengths": lengths})
    with torch.no_grad():
        want, _ = model(inputs, None, lengths)
        alone, _ = model(inputs[2:3, :4])  # example 2 without its padding
    assert max_diff(got[0], want) < 1e-4
    assert max_diff(got[0][2:3], alone) < 1e-4
    assert check_onnx(model, "classify", path) < 1e-4


def test_pt2_round_trip_with_dynamic_dims(checkpoint, tmp_path, run_cli):
    out = tmp_path / "charlm.pt2"
    code, _, err = run_cli(["export", checkpoint, "--output", out])  # the format from the extension
    assert code == 0, err
    program = torch.export.load(str(out)).module()
    payload, model, cfg = grutrain_model(checkpoint)
    V, H = len(payload["task_state"]["vocab"]), cfg.model.hidden_size
    for batch, seq in [(1, 1), (4, 23)]:
        tokens, hidden = torch.randint(0, V, (batch, seq)), torch.randn(2, batch, H)
        with torch.no_grad():
            got, want = program(tokens, hidden), model(tokens, hidden)
        assert max_diff(got[0], want[0]) < 1e-4 and max_diff(got[1], want[1]) < 1e-4
    meta = json.loads((tmp_path / "charlm.pt2.json").read_text())
    assert meta["format"] == "pt2" and meta["check"]["max_abs_difference"] < 1e-4


def test_pt2_reset_before_bidirectional_lengths(tmp_path):
    torch.manual_seed(1)
    cfg = ModelConfig(embedding_dim=0, hidden_size=6, num_layers=1, reset="before", bidirectional=True)
    model = SequenceModel(cfg, 3, input_size=2).eval()
    path = tmp_path / "cls.pt2"
    export_pt2(model, "classify", "before", path)
    program = torch.export.load(str(path)).module()
    inputs, lengths = torch.randn(3, 8, 2), torch.tensor([8, 2, 5])
    with torch.no_grad():
        assert max_diff(program(inputs, lengths), model(inputs, None, lengths)[0]) < 1e-4


def test_state_dict_loads_into_the_readme_model(checkpoint, tmp_path, run_cli, capsys):
    code, _, err = run_cli(["export", checkpoint, "--format", "state-dict", "--output", tmp_path / "charlm.pt"])
    assert code == 0, err
    namespace: dict = {}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(readme_snippet(), "README state-dict example", "exec"), namespace)
    finally:
        os.chdir(cwd)
    assert isinstance(namespace["model"].gru, torch.nn.GRU)
    payload, model, _ = grutrain_model(checkpoint)
    ids = torch.tensor([[payload["task_state"]["vocab"].index(c) for c in "Alice "]])
    with torch.no_grad():
        want, _ = model(ids)
    assert max_diff(namespace["logits"].detach(), want) < 1e-5
    printed = capsys.readouterr().out.strip()
    assert printed == payload["task_state"]["vocab"][int(want[0, -1].argmax())]


def test_state_dict_of_reset_before_is_refused(tmp_path, checkpoint):
    from grutrain.commands.export_formats import export_state_dict

    model = language_model(5, ModelConfig(embedding_dim=3, hidden_size=4, reset="before"))
    with pytest.raises(GrutrainError, match="reset=before"):
        export_state_dict(model, "lm", "before", tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_missing_onnx_extra_is_one_clear_line(checkpoint, tmp_path, run_cli, monkeypatch):
    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name.split(".")[0] in ("onnx", "onnxruntime"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    code, out, err = run_cli(["export", checkpoint, "--format", "onnx", "--output", tmp_path / "m.onnx"])
    assert code == 1
    assert err.strip() == f"error: {EXPORT_EXTRA_MESSAGE}"
    assert EXPORT_EXTRA_MESSAGE == "ONNX export needs the export extra: pip install 'grutrain[export]'"
    assert list(tmp_path.iterdir()) == []


def test_unknown_extension_and_bad_checkpoint_are_errors(checkpoint, tmp_path, run_cli):
    code, _, err = run_cli(["export", checkpoint, "--output", tmp_path / "model.bin"])
    assert code == 1 and "--format" in err
    code, _, err = run_cli(["export", tmp_path / "missing.pt", "--output", tmp_path / "m.onnx"])
    assert code == 1 and "not found" in err
    code, _, err = run_cli(["export", checkpoint, "--format", "tflite", "--output", tmp_path / "m.onnx"])
    assert code == 2
    assert list(tmp_path.iterdir()) == []


def test_metadata_of_other_tasks_from_their_checkpoint_state():
    """forecast: normalisation and the post-processing rule; classify: labels, vocabulary; any other
    task: its non-tensor state, tensors left out."""
    from grutrain.tasks import validate_config

    config = {"task": "forecast", "data": {"target_columns": ["y"], "input_len": 4, "horizon": 2}}
    forecast = {"normalisation": {"columns": ["y"], "n_targets": 1, "mean": [3.0], "std": [2.0]},
                "eval_series": {"values": torch.zeros(3, 1), "val": [0, 1]}}
    meta = task_class("forecast").from_checkpoint(validate_config(config), forecast).usage()
    assert meta["normalisation"]["mean"] == [3.0] and meta["horizon"] == 2 and "std" in meta["postprocessing"]
    assert json_task_state(forecast) == {"normalisation": forecast["normalisation"]}
    # the log transform and classical partners happen after the network: the plain rule would be wrong
    for data, told in (({"transform": "log"}, "expm1"), ({"theta_weight": 0.2, "mstl_weight": 0.5}, "0.3 x that")):
        layout = {"input_len": 4, "horizon": 2, "n_targets": 1, **data}
        state = {**forecast, "forecast_layout": {**layout, "calendar_cycles": [], "mase_scale": [1.0]}}
        cfg = validate_config({"task": "forecast", "data": {"target_columns": ["y"], "input_len": 4, "horizon": 2,
                                                            **data}})
        meta = task_class("forecast").from_checkpoint(cfg, state).usage()
        assert "forecast_layout" in meta and told in meta["postprocessing"], meta["postprocessing"]

    encoder = {"kind": "text", "labels": ["female", "male"], "vocab": ["<unk>", "a"], "train_counts": [2, 1],
               "max_len": None, "channels": 0}
    config = {"task": "classify", "data": {"path": "x.jsonl"}}
    classify = {"encoder": encoder, "eval_examples": {"val": None}}
    meta = task_class("classify").from_checkpoint(validate_config(config), classify).usage()
    assert meta["labels"] == ["female", "male"] and meta["vocab"] == ["<unk>", "a"]
    assert json_task_state({**classify, "eval_examples": {"val": torch.zeros(2)}}) == {"encoder": encoder}
