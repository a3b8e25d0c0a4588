"""`grutrain bench`: the GRU layers against torch.nn.GRU (bench_layers.py), then the whole trainer
against bare PyTorch loops and generation per token (bench_trainer.py), as one result.

`run_bench` checks the options, runs the parts and returns the result (what `--json` prints);
each part's text goes to `show` as soon as it is measured, so a long run prints as it goes.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, ContextManager, Sequence

import torch

from grutrain.capacity import check_gru_shape_fits
from grutrain.commands.bench_layers import (PRECISIONS, STANDARD_SHAPES, bench_layers, format_layer_markdown,
                                            format_layer_table)
from grutrain.commands.bench_trainer import (bench_generation, bench_trainer, format_generation_result,
                                             format_trainer_result)
from grutrain.errors import GrutrainError
from grutrain.runtime import autocast_dtype, resolve_device

__all__ = ["parse_shape", "run_bench", "machine_description"]


def parse_shape(text: str) -> tuple[int, int, int, int]:
    """`--shape T,B,I,H` as four integers, refused when a layer of that shape would not fit in memory."""
    parts = text.split(",")
    if len(parts) != 4 or not all(p.strip().isdigit() and 0 < int(p) < 10**9 for p in parts):
        example = ",".join(map(str, STANDARD_SHAPES[0]))
        raise GrutrainError(f"--shape {text[:60]!r} is not T,B,I,H (four positive integers, e.g. {example})")
    shape = tuple(int(p) for p in parts)
    check_gru_shape_fits(*shape)
    return shape


def _no_status(message: str) -> ContextManager:
    return contextlib.nullcontext()


def run_bench(shapes: Sequence[str] = (), *, repeats: int = 25, warmup: int = 3, threads: int | None = None,
              device: str = "cpu", trainer: bool = True, generation: bool = True, precision: str = "fp32",
              markdown_command: str | None = None,
              status: Callable[[str], ContextManager] = _no_status, show: Callable[[object], None] | None = None
              ) -> dict:
    """Time the layers at `shapes` ("T,B,I,H" texts; default: the standard shapes), then, as asked, the
    trainer and generation. Returns {device, threads, precision, machine, layers[, trainer][, generation]}.

    status(message): a context manager around each part (the CLI's spinner). show(part): called with
    each part's text, or the layers' rich Table (a Markdown table when `markdown_command` names the
    command that produced it), as soon as the part is done.
    """
    dev = resolve_device(device)
    if precision not in PRECISIONS:
        raise GrutrainError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    autocast_dtype(precision, dev)  # bf16 where this device has no native bfloat16: a one-line error
    sizes = [parse_shape(s) for s in shapes] if shapes else STANDARD_SHAPES
    show = show or (lambda part: None)

    with status("timing GRU layers (interleaved, medians)..."):
        layers = bench_layers(sizes, repeats=repeats, warmup=warmup, threads=threads, device=dev, precision=precision)
    result = {"device": str(dev), "threads": threads or torch.get_num_threads(),
              "precision": precision, "machine": machine_description(threads), "layers": layers}
    if markdown_command is not None:
        show(format_layer_markdown(layers, markdown_command, result["machine"]))
    else:
        show(format_layer_table(layers))
    if trainer:
        with status("timing grutrain fit against a bare PyTorch loop..."):
            result["trainer"] = bench_trainer(threads=threads, device=dev, precision=precision)
        show(format_trainer_result(result["trainer"]))
    if generation:
        with status("timing generation, one token at a time..."):
            result["generation"] = bench_generation(threads=threads, device=dev)
        show(format_generation_result(result["generation"]))
    return result


def machine_description(threads: int | None = None) -> str:
    """CPU model, cores, torch version and load: enough to tell whether two runs are comparable."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ""
    try:
        load = f", load average {os.getloadavg()[0]:.1f}"
    except (OSError, AttributeError):
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{threads or torch.get_num_threads()} threads{load}")
