"""`grutrain predict`: a trained model's outputs for new inputs, as CSV or JSONL."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from grutrain.files import json_text
from grutrain.commands.evaluate import naming_the_file
from grutrain.files.inputs import open_input
from grutrain.files.json_text import require_finite
from grutrain.files.outputs import check_output, write_output
from grutrain.runtime import resolve_device
from grutrain.tasks.checkpoints import open_checkpoint
from grutrain.tasks.protocols import Predicts, require


def predict_checkpoint(path, input_path, device: str = "auto") -> list[dict]:
    """One dict per prediction (a forecast step, a classified example), from the task's `predict` (Predicts)."""
    opened = open_checkpoint(path, resolve_device(device))
    with naming_the_file(path):
        require(opened.task, Predicts, "predict")
    open_input(input_path, "--input").close()  # a regular file that fits: a FIFO would block the reader
    with naming_the_file(path):
        rows = opened.task.predict(opened.model, Path(input_path), opened.device)
        return require_finite(rows, "the predictions")


def predict_to(checkpoint: Path, input_path: Path, output: Path | None, fmt: str | None,
               device: str = "auto") -> tuple[str | None, int]:
    """`grutrain predict`: the predictions as text, or written to `output` (then the text is None).

    Returns (text for stdout or None, number of predictions). `output` is checked before the work,
    so a path grutrain may not write is refused before the model runs, not after.
    """
    if output is not None:
        check_output(output, "--output", inputs=[checkpoint, input_path])
    rows = predict_checkpoint(checkpoint, input_path, device)
    text = format_rows(rows, output_format(output, fmt))
    if output is None:
        return text, len(rows)
    write_output(output, text, "--output", inputs=[checkpoint, input_path])
    return None, len(rows)


def format_rows(rows: list[dict], fmt: str) -> str:
    """rows as JSONL (one object a line) or CSV (a header from the first row's keys)."""
    if fmt == "jsonl":
        return "".join(json_text.dumps(row) + "\n" for row in rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in row.items()})
    return buffer.getvalue()


def output_format(output: Path | None, requested: str | None) -> str:
    if requested:
        return requested
    if output is not None and output.suffix.lower() == ".csv":
        return "csv"
    return "jsonl"
