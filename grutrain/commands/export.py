"""`grutrain export`: a trained model as ONNX, a torch.export program (pt2) or a plain state dict,
with a JSON file beside it that says how to use it (inputs, outputs, vocabulary, normalisation, labels).

Every format is checked before the command returns (export_formats.py): the exported model is run
on an input whose batch size and sequence length differ from the ones used at export and
compared with grutrain's own model; the largest difference goes into the JSON.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import Tensor

from grutrain import __version__
from grutrain.errors import GrutrainError
from grutrain.commands.export_formats import CHECK_BATCH, CHECK_SEQ, EXPORTERS, ONNX_OPSET, TOLERANCE, import_onnx
from grutrain.files.atomic import PendingFile, commit_together
from grutrain.files.outputs import check_output
from grutrain.commands.evaluate import naming_the_file
from grutrain.tasks.checkpoints import open_checkpoint
from grutrain.tasks.protocols import Exports, require

FORMATS = ("onnx", "pt2", "state-dict")
SUFFIX_FORMATS = {".onnx": "onnx", ".pt2": "pt2", ".pt": "state-dict", ".pth": "state-dict"}


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


def json_task_state(task_state: dict) -> dict:
    """A checkpoint's task state with its tensors left out (the held-out data travels in checkpoints
    for `grutrain eval`, not in exports)."""
    kept = {key: _json_ready(value) for key, value in task_state.items()}
    return {key: value for key, value in kept.items() if value is not _DROPPED}


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

    Both files are written to unique temporary names (files.atomic) and renamed together only
    after the check passes, so a failed export leaves no file behind (nor half of one), and two
    exports to the same --output leave one export's pair.
    """
    checkpoint, output = Path(checkpoint), Path(output)
    fmt = output_path_format(output, fmt)
    if fmt == "onnx":
        import_onnx()  # fail before loading anything
    if output.is_dir():
        raise GrutrainError(f"--output {str(output)!r} is a directory; give a file name such as model.{fmt}")
    check_output(output, "--output", inputs=[checkpoint])  # a new path or a regular file, never the checkpoint
    check_output(metadata_path(output), "--output's metadata", inputs=[checkpoint])
    opened = open_checkpoint(checkpoint, torch.device("cpu"))
    with naming_the_file(checkpoint):
        require(opened.task, Exports, "export")
    cfg, payload = opened.cfg, opened.payload
    model = opened.model.float().eval()
    reset = cfg.model.reset if cfg.model.backend == "custom" else "after"  # torch.nn.GRU computes "after"
    serialise, check = EXPORTERS[fmt]
    interface, data = serialise(model, cfg.task, reset)  # in memory: only files.atomic writes
    with PendingFile(output, "--output") as model_file, \
            PendingFile(metadata_path(output), "--output's metadata") as meta_file:
        model_file.write(data)
        difference = check(model, cfg.task, model_file.tmp)
        if not difference <= TOLERANCE:
            raise GrutrainError(f"the exported {fmt} model's outputs differ from grutrain's by {difference:.3g} "
                                f"(more than {TOLERANCE:g}); nothing was written")
        usage = opened.task.usage()
        meta = {
            "format": fmt, "file": output.name, "task": cfg.task, "reset": reset,
            **interface,
            "dynamic_axes": {"batch": "any number of sequences",
                             "sequence": "any number of steps (1 or more)"},
            **usage,
            "check": {"max_abs_difference": difference, "against": "grutrain's model on the same input",
                      "batch": CHECK_BATCH, "sequence": CHECK_SEQ},
            "source": {"checkpoint": str(checkpoint), "step": opened.step,
                       "grutrain_version": payload.get("grutrain_version"), "exported_by": __version__,
                       "torch_version": torch.__version__},
            "task_state": {k: v for k, v in json_task_state(payload["task_state"]).items() if k not in usage},
            "config": payload["config"],
        }
        if fmt == "onnx":
            meta["onnx_opset"] = ONNX_OPSET
        meta_file.write(json.dumps(meta, indent=2) + "\n")
        commit_together(model_file, meta_file)  # a concurrent export's pair is never mixed with this one
    return meta
