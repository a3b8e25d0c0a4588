"""The export formats: ONNX, a torch.export program (pt2) and a plain state dict, each written and
then checked against grutrain's own model on an input of another batch size and length.

Why the GRU is swapped before exporting: grutrain's GRU runs its time loop in Python, which a
tracer unrolls to the example's length. So
- ONNX gets the same weights in torch.nn.GRU (same parameter names and layout), which the
  exporter turns into ONNX's GRU operator with `linear_before_reset=1`: reset "after". ONNX's
  `linear_before_reset=0` is exactly reset "before" (n = tanh(x W_in + (r * h) W_hn + b_hn + b_in)),
  so a reset="before" model is exported the same way and the attribute flipped afterwards.
- pt2 gets grutrain's GRU (a torch.nn.GRU swapped for it, reset "after"): under torch.export it
  runs its equations with the time loop as `scan` (grutrain.gru.paths), which torch.export keeps
  as one operator over a dynamic number of steps.

Inputs and outputs: each task's `export_io` picks one of the interfaces of tasks/export_io.py
(batch and sequence are dynamic axes); docs/export.md lists them by task.
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
import warnings
from io import BytesIO
from pathlib import Path

import torch
from torch import Tensor, nn

from grutrain.errors import GrutrainError
from grutrain.files.atomic import write_file
from grutrain.gru import GRU
from grutrain.gru.reference import scan_available
from grutrain.tasks import task_class
from grutrain.tasks.export_io import LanguageModelIO, PaddedSequenceIO

ONNX_OPSET = 17
TOLERANCE = 1e-4  # the largest |exported - grutrain| accepted on the check input
EXPORT_BATCH, EXPORT_SEQ = 2, 3  # the example input's shape; the check uses other sizes
CHECK_BATCH, CHECK_SEQ = 3, 11

EXPORT_EXTRA_MESSAGE = "ONNX export needs the export extra: pip install 'grutrain[export]'"


# --------------------------------------------------------------------------- the model's interface


def _gru(model) -> nn.Module:
    return model.gru


def model_io(model, task: str) -> nn.Module:
    """The model behind the exported interface of its task (the task's export_io, tasks/export_io.py)."""
    return task_class(task).export_io(model)


def example_inputs(io: nn.Module, batch: int, seq: int, seed: int = 0) -> tuple[Tensor, ...]:
    """Random inputs of the model's kinds and sizes: token ids below the vocabulary size, or features."""
    gen = torch.Generator().manual_seed(seed)
    model = io.model
    if model.vocab_size is not None:  # token ids
        x = torch.randint(0, model.vocab_size, (batch, seq), generator=gen)
    else:
        x = torch.randn(batch, seq, _gru(model).input_size, generator=gen)
    if isinstance(io, LanguageModelIO):
        gru = _gru(model)
        states = gru.num_layers * (2 if gru.bidirectional else 1)
        return x, 0.5 * torch.randn(states, batch, gru.hidden_size, generator=gen)
    if isinstance(io, PaddedSequenceIO):
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
        out[name] = {0: "batch", 1: "sequence"} if name == "logits" and isinstance(io, LanguageModelIO) \
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


def grutrain_gru_copy(gru: nn.Module, reset: str) -> GRU:
    """grutrain's GRU with the same configuration and weights as `gru` (torch.nn.GRU or grutrain's), in eval mode."""
    mine = GRU(gru.input_size, gru.hidden_size, gru.num_layers, bias=gru.bias, batch_first=gru.batch_first,
               dropout=gru.dropout, bidirectional=gru.bidirectional, reset=reset)
    mine.load_state_dict(gru.state_dict())
    return mine.eval()


def _with_gru(model, gru: nn.Module):
    clone = copy.deepcopy(model).eval()
    clone.gru = gru
    return clone


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


def import_onnx():
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise GrutrainError(EXPORT_EXTRA_MESSAGE) from None
    return onnx, onnxruntime


def export_onnx(model, task: str, reset: str, path: Path) -> dict:
    """Write `model` as ONNX (through files.atomic); returns the interface. Checked by `check_onnx`."""
    interface, data = onnx_bytes(model, task, reset)
    write_file(path, data, "ONNX model")
    return interface


def onnx_bytes(model, task: str, reset: str) -> tuple[dict, bytes]:
    """`model` as ONNX, serialised in memory (so only files.atomic ever writes to the disk)."""
    onnx, _ = import_onnx()
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
    buffer = BytesIO()
    with _quiet_stderr(), torch.no_grad():
        torch.onnx.export(io, inputs, buffer, input_names=io.input_names, output_names=io.output_names,
                          dynamic_axes=_axes(io), opset_version=ONNX_OPSET, dynamo=False)
    graph = onnx.load_from_string(buffer.getvalue())
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
    return interface, graph.SerializeToString()


def check_onnx(model, task: str, path: Path) -> float:
    """max |onnxruntime - grutrain| over every output, on a check input of another batch size and length."""
    _, ort = import_onnx()
    io = model_io(model, task).eval()
    inputs = example_inputs(io, CHECK_BATCH, CHECK_SEQ, seed=1)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {name: t.numpy() for name, t in zip(io.input_names, inputs)})
    return _max_difference(io, inputs, [torch.from_numpy(g) for g in got])


def export_pt2(model, task: str, reset: str, path: Path) -> dict:
    """Write `model` as a torch.export program (through files.atomic); returns the interface."""
    interface, data = pt2_bytes(model, task, reset)
    write_file(path, data, "pt2 program")
    return interface


def pt2_bytes(model, task: str, reset: str) -> tuple[dict, bytes]:
    """`model` as a torch.export program with dynamic batch and sequence dims, saved in memory: torch's
    zip writer aborts the process ("terminate called") when the disk fills under it."""
    if not scan_available():
        raise GrutrainError(f"pt2 export needs a torch with torch.export's scan (2.6 or newer); this is torch "
                            f"{torch.__version__}. Use --format onnx or state-dict")
    io = model_io(_with_gru(model, grutrain_gru_copy(_gru(model), reset)), task).eval()
    inputs = example_inputs(io, EXPORT_BATCH, EXPORT_SEQ)
    interface = _interface(model, task, inputs)
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
    buffer = BytesIO()
    torch.export.save(program, buffer)
    return interface, buffer.getvalue()


def check_pt2(model, task: str, path: Path) -> float:
    """max |torch.export.load(path) - grutrain| on a check input of another batch size and length."""
    io = model_io(model, task).eval()
    inputs = example_inputs(io, CHECK_BATCH, CHECK_SEQ, seed=1)
    with open(path, "rb") as f:  # a file object: the temporary's name does not end in .pt2
        loaded = torch.export.load(f).module()
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
    """Write the weights alone (through files.atomic); returns the interface."""
    interface, data = state_dict_bytes(model, task, reset)
    write_file(path, data, "state dict")
    return interface


def state_dict_bytes(model, task: str, reset: str) -> tuple[dict, bytes]:
    """The weights alone (torch.save of a dict of tensors), under torch.nn.GRU's parameter names."""
    if reset == "before":
        raise GrutrainError("this model computes reset=before, which torch.nn.GRU does not: its state dict would "
                            "give other outputs there. Use --format onnx or pt2 (they keep reset=before)")
    buffer = BytesIO()
    torch.save({name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}, buffer)
    return _interface(model, task), buffer.getvalue()


def check_state_dict(model, task: str, path: Path) -> float:
    """max |a copy with torch.nn.GRU loading the file - grutrain|."""
    plain = _with_gru(model, torch_gru_copy(_gru(model)))
    plain.load_state_dict(torch.load(str(path), weights_only=True))
    io, reference = model_io(plain, task).eval(), model_io(model, task).eval()
    inputs = example_inputs(reference, CHECK_BATCH, CHECK_SEQ, seed=1)
    with torch.no_grad():
        got = io(*inputs)
    return _max_difference(reference, inputs, list(got) if isinstance(got, tuple) else [got])


# Each format: (its bytes and interface, made in memory; the check of a file holding them).
EXPORTERS = {"onnx": (onnx_bytes, check_onnx), "pt2": (pt2_bytes, check_pt2),
             "state-dict": (state_dict_bytes, check_state_dict)}
