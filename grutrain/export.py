"""`grutrain export`: a trained model as ONNX, a torch.export program (pt2) or a plain state dict,
with a JSON file beside it that says how to use it (inputs, outputs, vocabulary, normalisation, labels).

Every format is checked before the command returns: the ONNX file is run in onnxruntime and the
pt2 program is loaded back with torch.export.load, both on an input whose batch size and
sequence length differ from the ones used at export, and compared with grutrain's own model
(the custom GRU); the largest difference goes into the JSON.

Why the GRU is swapped before exporting: grutrain's GRU runs its time loop in Python, which a
tracer unrolls to the example's length. So
- ONNX gets the same weights in torch.nn.GRU (same parameter names and layout), which the
  exporter turns into ONNX's GRU operator with `linear_before_reset=1`: reset "after". ONNX's
  `linear_before_reset=0` is exactly reset "before" (n = tanh(x W_in + (r * h) W_hn + b_hn + b_in)),
  so a reset="before" model is exported the same way and the attribute flipped afterwards.
- pt2 gets `ScanGRU` below: the same equations with the time loop as `scan`, which torch.export
  keeps as one operator over a dynamic number of steps.

Inputs and outputs by task (batch and sequence are dynamic axes):
    lm        tokens [batch, sequence] int64, hidden [layers, batch, hidden_size] float32
              -> logits [batch, sequence, vocab], hidden_out [layers, batch, hidden_size]
    classify  inputs [batch, sequence] int64 token ids (text) or [batch, sequence, channels] float32
              (normalised series), lengths [batch] int64 (right-padded batches)
              -> logits [batch, labels]
    forecast  inputs [batch, sequence, features] float32 (normalised) -> output [batch, horizon * targets]
              (the change from the last input value of each target, normalised)
    synthetic inputs [batch, sequence(, features)] -> output [batch, 1] (adding, sine) or
              [batch, sequence, classes] (copy)
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from grutrain.errors import GrutrainError

FORMATS = ("onnx", "pt2", "state-dict")
SUFFIX_FORMATS = {".onnx": "onnx", ".pt2": "pt2", ".pt": "state-dict", ".pth": "state-dict"}
ONNX_OPSET = 17
TOLERANCE = 1e-4  # the largest |exported - grutrain| accepted on the check input
EXPORT_BATCH, EXPORT_SEQ = 2, 3  # the example input's shape; the check uses other sizes
CHECK_BATCH, CHECK_SEQ = 3, 11

EXPORT_EXTRA_MESSAGE = "ONNX export needs the export extra: pip install 'grutrain[export]'"

# Checkpoint keys written by the training loop; everything else in a payload is the task's state.
TRAINER_KEYS = {
    "format_version", "grutrain_version", "task", "config", "model", "optimizer", "scaler", "step", "epoch",
    "monitor", "sampler", "hidden", "global_batch", "world_size", "loss_window", "skipped_steps", "bad_in_a_row",
    "rng", "rank_rng", "wall_time_s",
}


# --------------------------------------------------------------------------- the model's interface


class _LanguageModelIO(nn.Module):
    """(tokens, hidden) -> (logits, hidden_out): the hidden state goes in and out, so text can be
    generated one step at a time and long texts read in pieces."""

    input_names, output_names = ["tokens", "hidden"], ["logits", "hidden_out"]

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor, hidden: Tensor):
        return self.model(tokens, hidden)


class _SequenceIO(nn.Module):
    """inputs -> the head's output (SequenceModel without padding)."""

    def __init__(self, model, output_name: str):
        super().__init__()
        self.model = model
        self.input_names, self.output_names = ["inputs"], [output_name]

    def forward(self, inputs: Tensor):
        return self.model(inputs)[0]


class _PaddedSequenceIO(nn.Module):
    """(inputs, lengths) -> the head's output at each sequence's own last step (right-padded batches)."""

    def __init__(self, model, output_name: str):
        super().__init__()
        self.model = model
        self.input_names, self.output_names = ["inputs", "lengths"], [output_name]

    def forward(self, inputs: Tensor, lengths: Tensor):
        # An explicit zero state (= None): the ONNX exporter fails on a one-layer GRU over packed
        # sequences without one.
        gru = _gru(self.model)
        states = gru.num_layers * (2 if gru.bidirectional else 1)
        hidden = torch.zeros(states, inputs.shape[0], gru.hidden_size, dtype=self.model.head.weight.dtype,
                             device=inputs.device)
        return self.model(inputs, hidden, lengths)[0]


def _gru(model) -> nn.Module:
    return model.gru


def model_io(model, task: str) -> nn.Module:
    """The model behind the exported interface of its task (see the module docstring)."""
    from grutrain.model import LanguageModel

    if isinstance(model, LanguageModel):
        return _LanguageModelIO(model)
    output = "logits" if task == "classify" else "output"
    if task == "classify":  # examples of different lengths share a batch only with their lengths
        return _PaddedSequenceIO(model, output)
    return _SequenceIO(model, output)


def example_inputs(io: nn.Module, batch: int, seq: int, seed: int = 0) -> tuple[Tensor, ...]:
    """Random inputs of the model's kinds and sizes: token ids below the vocabulary size, or features."""
    gen = torch.Generator().manual_seed(seed)
    model = io.model
    if model.vocab_size is not None:  # token ids
        x = torch.randint(0, model.vocab_size, (batch, seq), generator=gen)
    else:
        x = torch.randn(batch, seq, _gru(model).input_size, generator=gen)
    if isinstance(io, _LanguageModelIO):
        gru = _gru(model)
        states = gru.num_layers * (2 if gru.bidirectional else 1)
        return x, 0.5 * torch.randn(states, batch, gru.hidden_size, generator=gen)
    if isinstance(io, _PaddedSequenceIO):
        lengths = torch.randint(1, seq + 1, (batch,), generator=gen)
        lengths[0] = seq  # the longest fills the batch, as pad_sequence makes it
        return x, lengths
    return (x,)


def _axes(io: nn.Module) -> dict[str, dict[int, str]]:
    """Which axes of each input and output are dynamic ("batch", "sequence")."""
    inputs = {"tokens": {0: "batch", 1: "sequence"}, "hidden": {1: "batch"},
              "inputs": {0: "batch", 1: "sequence"}, "lengths": {0: "batch"}}
    out = {name: inputs[name] for name in io.input_names}
    for name in io.output_names:
        out[name] = {0: "batch", 1: "sequence"} if name == "logits" and isinstance(io, _LanguageModelIO) \
            else {1: "batch"} if name == "hidden_out" else {0: "batch"}
    if getattr(io.model, "per_step", False):
        out[io.output_names[0]] = {0: "batch", 1: "sequence"}
    return out


def _interface(model, task: str, inputs: tuple[Tensor, ...] | None = None) -> dict:
    """{"inputs": [{"name", "dtype", "shape"}], "outputs": [...]} of the exported interface, dynamic
    axes named, from grutrain's model run on `inputs` (default: an example input)."""
    io = model_io(model, task).eval()
    inputs = inputs if inputs is not None else example_inputs(io, EXPORT_BATCH, EXPORT_SEQ)
    with torch.no_grad():
        outputs = io(*inputs)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    axes = _axes(io)

    def describe(name: str, t: Tensor) -> dict:
        shape = [axes[name].get(i, int(size)) for i, size in enumerate(t.shape)]
        return {"name": name, "dtype": str(t.dtype).removeprefix("torch."), "shape": shape}

    return {"inputs": [describe(n, t) for n, t in zip(io.input_names, inputs)],
            "outputs": [describe(n, t) for n, t in zip(io.output_names, outputs)]}


# --------------------------------------------------------------------------- GRU swaps


def torch_gru_copy(gru: nn.Module) -> nn.GRU:
    """torch.nn.GRU with the same configuration and weights as grutrain's GRU (or a copy of an nn.GRU)."""
    plain = nn.GRU(gru.input_size, gru.hidden_size, gru.num_layers, bias=gru.bias, batch_first=gru.batch_first,
                   dropout=gru.dropout, bidirectional=gru.bidirectional)
    plain.load_state_dict(gru.state_dict())
    return plain.eval()


def _with_gru(model, gru: nn.Module):
    clone = copy.deepcopy(model).eval()
    clone.gru = gru
    return clone


def _scan():
    try:
        from torch._higher_order_ops.scan import scan
    except ImportError:
        raise GrutrainError(f"pt2 export needs a torch with torch.export's scan (2.6 or newer); this is torch "
                            f"{torch.__version__}. Use --format onnx or state-dict") from None
    return scan


def scan_gru_layer(x: Tensor, h0: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor | None,
                   bias_hh: Tensor | None, reset: str) -> tuple[Tensor, Tensor]:
    """One direction of one layer, x [T, B, I], h0 [B, H] -> (output [T, B, H], h_T [B, H]).

    grutrain.gru.reference_gru_layer's equations, with the time loop as torch's `scan`.
    """
    hidden_size = weight_hh.shape[1]
    x_proj = F.linear(x, weight_ih, bias_ih)  # [T, B, 3H]

    def step(h: Tensor, x_t: Tensor):  # h [B, H], x_t [B, 3H]
        # Sliced in here: scan refuses closed-over tensors that are views of one another.
        w_hrz, w_hn = weight_hh[: 2 * hidden_size], weight_hh[2 * hidden_size:]
        b_hrz, b_hn = (None, None) if bias_hh is None else (bias_hh[: 2 * hidden_size], bias_hh[2 * hidden_size:])
        x_r, x_z, x_n = x_t.chunk(3, dim=1)
        h_r, h_z = F.linear(h, w_hrz, b_hrz).chunk(2, dim=1)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        if reset == "after":
            n = torch.tanh(x_n + r * F.linear(h, w_hn, b_hn))
        else:
            n = torch.tanh(x_n + F.linear(r * h, w_hn, b_hn))
        h_new = z * h + (1 - z) * n
        return h_new, h_new.clone()  # scan wants the carry and the output as separate tensors

    h_last, output = _scan()(step, h0, x_proj)
    return output, h_last


class ScanGRU(nn.Module):
    """grutrain's GRU (batch-first, eval mode) for torch.export: same parameters and results, with the
    time loop as `scan` so the exported program takes any sequence length.

    With `lengths` ([B], right-padded batches) it gives what grutrain's GRU gives: h_n at each
    sequence's last step, the backward direction reading each sequence reversed within its own
    length, and zeros after each end.
    """

    def __init__(self, gru: nn.Module, reset: str):
        super().__init__()
        if not gru.batch_first:
            raise ValueError("ScanGRU is for batch-first GRUs")
        self.input_size, self.hidden_size, self.num_layers = gru.input_size, gru.hidden_size, gru.num_layers
        self.bidirectional, self.batch_first = gru.bidirectional, True
        self.num_directions = 2 if gru.bidirectional else 1
        self.bias, self.reset = gru.bias, reset
        for name, value in gru.state_dict().items():
            self.register_parameter(name, nn.Parameter(value.detach().clone(), requires_grad=False))

    def _weights(self, layer: int, direction: int) -> list[Tensor | None]:
        suffix = "_reverse" if direction else ""
        names = [f"{kind}_l{layer}{suffix}" for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        return [getattr(self, name) if self.bias or i < 2 else None for i, name in enumerate(names)]

    def forward(self, input: Tensor, hx: Tensor | None = None, lengths: Tensor | None = None):
        x = input.transpose(0, 1)  # [T, B, I]
        T, batch = x.shape[0], x.shape[1]
        if hx is None:
            hx = x.new_zeros(self.num_layers * self.num_directions, batch, self.hidden_size)
        if lengths is not None:
            lengths = lengths.to(x.device).long()
            steps = torch.arange(T, device=x.device).unsqueeze(1)  # [T, 1]
            valid = steps < lengths  # [T, B]
            reverse_index = torch.where(valid, lengths - 1 - steps, steps)  # [T, B], its own inverse
            last_step = (lengths - 1).view(1, batch, 1).expand(1, batch, self.hidden_size)  # [1, B, H]

        def gather_steps(t: Tensor, index: Tensor) -> Tensor:  # t [T, B, F], index [T, B]
            return t.gather(0, index.unsqueeze(2).expand(-1, -1, t.size(2)))

        finals = []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.num_directions):
                h0 = hx[layer * self.num_directions + direction]
                weights = self._weights(layer, direction)
                if lengths is None:
                    source = x.flip(0) if direction else x
                    out, h_last = scan_gru_layer(source, h0, *weights, reset=self.reset)
                    out = out.flip(0) if direction else out
                else:
                    source = gather_steps(x, reverse_index) if direction else x
                    out, _ = scan_gru_layer(source, h0, *weights, reset=self.reset)
                    h_last = out.gather(0, last_step).squeeze(0)
                    out = gather_steps(out, reverse_index) if direction else out
                    out = torch.where(valid.unsqueeze(2), out, out.new_zeros(()))
                outputs.append(out)
                finals.append(h_last)
            x = torch.cat(outputs, dim=2) if self.num_directions == 2 else outputs[0]  # [T, B, D*H]
        return x.transpose(0, 1), torch.stack(finals)


# --------------------------------------------------------------------------- the formats


@contextlib.contextmanager
def _quiet_stderr():
    """Keep the exporters' C++ warnings (shape inference of packed sequences, deprecations) off the terminal."""
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    try:
        with tempfile.TemporaryFile() as sink, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(fd, 2)
    finally:
        os.close(fd)


def _import_onnx():
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise GrutrainError(EXPORT_EXTRA_MESSAGE) from None
    return onnx, onnxruntime


def export_onnx(model, task: str, reset: str, path: Path) -> dict:
    """Write `model` as ONNX; returns the interface description. The file is checked by `check_onnx`."""
    onnx, _ = _import_onnx()
    plain = _with_gru(model, torch_gru_copy(_gru(model)))
    if plain.vocab_size is not None and plain.embedding is None:
        # One-hot inputs as a lookup in the identity matrix: the same vectors, and the exporter
        # handles an embedding in front of packed sequences, where it fails on one_hot.
        plain.embedding = nn.Embedding.from_pretrained(torch.eye(plain.vocab_size, dtype=plain.head.weight.dtype))
    io = model_io(plain, task).eval()
    inputs = example_inputs(io, EXPORT_BATCH, EXPORT_SEQ)
    interface = _interface(model, task, inputs)
    # The TorchScript-based exporter maps torch.nn.GRU (packed sequences included) onto ONNX's GRU
    # operator with the batch and sequence axes left dynamic; torch 2.13's dynamo exporter writes
    # the sequence axis of the outputs as fixed and takes ~50x longer on this model.
    with _quiet_stderr(), torch.no_grad():
        torch.onnx.export(io, inputs, str(path), input_names=io.input_names, output_names=io.output_names,
                          dynamic_axes=_axes(io), opset_version=ONNX_OPSET, dynamo=False)
    graph = onnx.load(str(path))
    grus = [node for node in graph.graph.node if node.op_type == "GRU"]
    if len(grus) != _gru(model).num_layers:
        raise GrutrainError(f"the ONNX graph has {len(grus)} GRU operators for {_gru(model).num_layers} layers; "
                            "export with --format pt2 or state-dict instead")
    if reset == "before":
        for node in grus:
            for attribute in node.attribute:
                if attribute.name == "linear_before_reset":
                    attribute.i = 0  # ONNX's GRU then computes reset "before"
        onnx.checker.check_model(graph)
        onnx.save(graph, str(path))
    return interface


def check_onnx(model, task: str, path: Path) -> float:
    """max |onnxruntime - grutrain| over every output, on a check input of another batch size and length."""
    _, ort = _import_onnx()
    io = model_io(model, task).eval()
    inputs = example_inputs(io, CHECK_BATCH, CHECK_SEQ, seed=1)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {name: t.numpy() for name, t in zip(io.input_names, inputs)})
    return _max_difference(io, inputs, [torch.from_numpy(g) for g in got])


def export_pt2(model, task: str, reset: str, path: Path) -> dict:
    """Write `model` as a torch.export program (torch.export.save) with dynamic batch and sequence dims."""
    io = model_io(_with_gru(model, ScanGRU(_gru(model), reset)), task).eval()
    inputs = example_inputs(io, EXPORT_BATCH, EXPORT_SEQ)
    interface = _interface(model, task, inputs)  # run eagerly, scan would compile itself: use the original
    dims = {"batch": torch.export.Dim("batch"), "sequence": torch.export.Dim("sequence")}
    axes = _axes(io)
    dynamic = {name: {axis: dims[label] for axis, label in axes[name].items()} for name in io.input_names}
    try:
        with _quiet_stderr(), torch.no_grad():
            program = torch.export.export(io, inputs, dynamic_shapes=dynamic)
    except GrutrainError:
        raise
    except Exception as exc:  # torch.export's errors are long; the first line says what failed
        raise GrutrainError(f"torch.export failed: {str(exc).strip().splitlines()[0][:300]}; "
                            "use --format onnx or state-dict") from None
    torch.export.save(program, str(path))
    return interface


def check_pt2(model, task: str, path: Path) -> float:
    """max |torch.export.load(path) - grutrain| on a check input of another batch size and length."""
    io = model_io(model, task).eval()
    inputs = example_inputs(io, CHECK_BATCH, CHECK_SEQ, seed=1)
    loaded = torch.export.load(str(path)).module()
    with torch.no_grad():
        got = loaded(*inputs)
    return _max_difference(io, inputs, list(got) if isinstance(got, (tuple, list)) else [got])


def _max_difference(io: nn.Module, inputs: tuple[Tensor, ...], got: list[Tensor]) -> float:
    with torch.no_grad():
        want = io(*inputs)
    want = list(want) if isinstance(want, tuple) else [want]
    if len(got) != len(want) or any(tuple(g.shape) != tuple(w.shape) for g, w in zip(got, want)):
        raise GrutrainError(f"the exported model's outputs have shapes {[list(g.shape) for g in got]}, "
                            f"grutrain's {[list(w.shape) for w in want]}")
    return max(float((g.float() - w.float()).abs().max()) for g, w in zip(got, want))


def export_state_dict(model, task: str, reset: str, path: Path) -> dict:
    """The weights alone (torch.save of a dict of tensors), under torch.nn.GRU's parameter names."""
    if reset == "before":
        raise GrutrainError("this model computes reset=before, which torch.nn.GRU does not: its state dict would "
                            "give other outputs there. Use --format onnx or pt2 (they keep reset=before)")
    torch.save({name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}, str(path))
    return _interface(model, task)


def check_state_dict(model, task: str, path: Path) -> float:
    """max |a copy with torch.nn.GRU loading the file - grutrain|."""
    plain = _with_gru(model, torch_gru_copy(_gru(model)))
    plain.load_state_dict(torch.load(str(path), weights_only=True))
    io, reference = model_io(plain, task).eval(), model_io(model, task).eval()
    inputs = example_inputs(reference, CHECK_BATCH, CHECK_SEQ, seed=1)
    with torch.no_grad():
        got = io(*inputs)
    return _max_difference(reference, inputs, list(got) if isinstance(got, tuple) else [got])


EXPORTERS = {"onnx": (export_onnx, check_onnx), "pt2": (export_pt2, check_pt2),
             "state-dict": (export_state_dict, check_state_dict)}


# --------------------------------------------------------------------------- what a user needs beside it


_DROPPED = object()


def _json_ready(value):
    """The value as JSON can hold it, or _DROPPED for data: a tensor, a dict holding one, a dict or
    list left with nothing else."""
    if isinstance(value, Tensor):
        return _DROPPED
    if isinstance(value, dict):
        if any(isinstance(v, Tensor) for v in value.values()):
            return _DROPPED  # a block of data (a held-out series, packed examples), with its bookkeeping
        out = {str(k): r for k, r in ((k, _json_ready(v)) for k, v in value.items()) if r is not _DROPPED}
        return out if out or not value else _DROPPED
    if isinstance(value, (list, tuple)):
        items = [_json_ready(v) for v in value]
        return _DROPPED if any(r is _DROPPED for r in items) else items
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def task_state(payload: dict) -> dict:
    """The checkpoint's task state (what the task stored beside the weights), tensors left out
    (the held-out data travels in checkpoints for `grutrain eval`, not in exports)."""
    kept = {key: _json_ready(value) for key, value in payload.items() if key not in TRAINER_KEYS}
    return {key: value for key, value in kept.items() if value is not _DROPPED}


def usage_metadata(payload: dict, cfg) -> dict:
    """What it takes to turn raw data into the inputs and the outputs into answers, by task."""
    data = payload["config"].get("data", {})
    if cfg.task == "lm":
        return {"vocab": list(payload["vocab"]), "tokenizer": data.get("tokenizer"), "lowercase": data.get("lowercase"),
                "preprocessing": "tokens: ids in `vocab` (0 = <unk>) of the text split by `tokenizer` "
                                 "(char: every character; word: \\w+ runs and single punctuation marks), "
                                 "lowercased first when `lowercase` is true; hidden: zeros to start, then the "
                                 "previous call's hidden_out to continue a text",
                "postprocessing": "softmax(logits[:, t]) is the distribution of the token after position t"}
    if cfg.task == "forecast":
        norm = payload.get("normalisation") or {}
        n_targets = norm.get("n_targets")
        layout = payload.get("forecast_layout") or {}
        if layout.get("anchor_lag", 1) > 1 or layout.get("calendar_cycles") or layout.get("quantiles") \
                or payload.get("forecast_series"):
            # Seasonal anchoring, calendar inputs, quantiles or several series: the inputs and outputs are
            # those of grutrain/data/forecast_windows.py (make_inputs, add_anchor), described in docs/forecasting.md.
            return {"normalisation": norm, "forecast_layout": layout, "forecast_series": payload.get("forecast_series"),
                    "target_columns": data.get("target_columns"),
                    "preprocessing": "see docs/forecasting.md, 'What the model reads' (make_inputs)",
                    "postprocessing": "see docs/forecasting.md, 'What the model reads' (add_anchor)"}
        return {"normalisation": norm, "input_len": data.get("input_len"), "horizon": data.get("horizon"),
                "target_columns": data.get("target_columns"), "input_columns": data.get("input_columns"),
                "preprocessing": "z = (value - mean) / std for the last input_len rows of the columns in "
                                 "normalisation.columns order (targets, then extra inputs); target column j is fed "
                                 "relative to the window's last value, z[:, :, j] - z[:, -1, j]; extra inputs as z",
                "postprocessing": f"forecast[b, k, j] = z_last[b, j] + output[b].reshape(horizon, {n_targets})"
                                  "[k, j], then * std[j] + mean[j], with z_last = z[b, -1, j] taken before the "
                                  "subtraction: the value of target j, k+1 steps after the input"}
    if cfg.task == "classify":
        encoder = (payload.get("classify") or {}).get("encoder") or {}
        out = {"labels": encoder.get("labels"), "kind": encoder.get("kind"), "max_len": encoder.get("max_len"),
               "lowercase": data.get("lowercase"), "postprocessing": "softmax(logits[b]) over `labels`"}
        if encoder.get("kind") == "text":
            out["vocab"] = encoder.get("vocab")
            out["preprocessing"] = ("inputs: character ids in `vocab` (0 = <unk>; lowercased first when "
                                    "`lowercase` is true; at most max_len characters), right-padded with 0; "
                                    "lengths: each example's own length")
        else:
            out["normalisation"] = {"mean": encoder.get("mean"), "std": encoder.get("std"),
                                    "channels": encoder.get("channels")}
            out["preprocessing"] = ("inputs: (value - mean) / std per channel, missing values 0, at most max_len "
                                    "steps, right-padded with 0; lengths: each example's own length")
        return out
    if cfg.task == "synthetic":
        return {"kind": data.get("kind"),
                "preprocessing": "inputs as grutrain/data/synthetic.py generates them for data.kind"}
    return {}


def output_path_format(output: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise GrutrainError(f"--format {fmt!r} is not a format; expected one of {', '.join(FORMATS)}")
        return fmt
    found = SUFFIX_FORMATS.get(output.suffix.lower())
    if found is None:
        raise GrutrainError(f"cannot tell the format from {str(output)!r}; pass --format onnx, pt2 or state-dict "
                            "(or name the file .onnx, .pt2 or .pt)")
    return found


def metadata_path(output: Path) -> Path:
    return output.with_name(output.name + ".json")


def export_checkpoint(checkpoint: str | Path, output: str | Path, fmt: str | None = None) -> dict:
    """Export a checkpoint's model; writes `output` and `<output>.json`, returns the JSON's content.

    Both files are written to temporary names and renamed only after the check passes, so a
    failed export leaves no file behind (nor half of one).
    """
    from grutrain import __version__
    from grutrain.checkpoint import load_checkpoint
    from grutrain.tasks import load_trained_model

    checkpoint, output = Path(checkpoint), Path(output)
    fmt = output_path_format(output, fmt)
    if fmt == "onnx":
        _import_onnx()  # fail before loading anything
    if output.is_dir():
        raise GrutrainError(f"--output {str(output)!r} is a directory; give a file name such as model.{fmt}")
    if not output.parent.is_dir():
        raise GrutrainError(f"--output {str(output)!r}: the directory {str(output.parent)!r} does not exist")
    payload = load_checkpoint(checkpoint, map_location="cpu")
    model, cfg = load_trained_model(payload, torch.device("cpu"), source=str(checkpoint))
    model = model.float().eval()
    reset = "after" if isinstance(_gru(model), nn.GRU) else getattr(_gru(model), "reset", "after")
    write, check = EXPORTERS[fmt]
    tmp = output.with_name(f".{output.name}.tmp{output.suffix}")  # torch.export.save wants the .pt2 suffix
    try:
        interface = write(model, cfg.task, reset, tmp)
        difference = check(model, cfg.task, tmp)
        if not difference <= TOLERANCE:
            raise GrutrainError(f"the exported {fmt} model's outputs differ from grutrain's by {difference:.3g} "
                                f"(more than {TOLERANCE:g}); nothing was written")
        usage = usage_metadata(payload, cfg)
        meta = {
            "format": fmt, "file": output.name, "task": cfg.task, "reset": reset,
            **interface,
            "dynamic_axes": {"batch": "any number of sequences",
                             "sequence": "any number of steps (1 or more)"},
            **usage,
            "check": {"max_abs_difference": difference, "against": "grutrain's model on the same input",
                      "batch": CHECK_BATCH, "sequence": CHECK_SEQ},
            "source": {"checkpoint": str(checkpoint), "step": payload["step"],
                       "grutrain_version": payload.get("grutrain_version"), "exported_by": __version__,
                       "torch_version": torch.__version__},
            "task_state": {k: v for k, v in task_state(payload).items() if k not in usage},  # the rest of it
            "config": payload["config"],
        }
        if fmt == "onnx":
            meta["onnx_opset"] = ONNX_OPSET
        meta_tmp = tmp.with_name(tmp.name + ".json")
        meta_tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, output)
        os.replace(meta_tmp, metadata_path(output))
    except OSError as exc:
        raise GrutrainError(f"cannot write --output {str(output)!r}: {exc.strerror or exc}") from None
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + ".json")):
            leftover.unlink(missing_ok=True)
    return meta
