"""Will it fit? The memory a model or a benchmark needs, estimated before anything is allocated.

A model is built on the meta device (shapes only, no memory) to count its parameters; training
holds each parameter four times (weights, gradients, Adam's two moments) plus the activations of
one batch. Too much is refused with the estimate and the memory available, instead of an
allocator traceback (or the kernel's OOM killer) minutes later.
"""

from __future__ import annotations

import torch

from grutrain.errors import GrutrainError
from grutrain.files.inputs import available_memory, format_bytes


def parameter_count(build) -> int:
    """Parameters of the module `build()` returns, built on the meta device (no memory used)."""
    with torch.device("meta"):
        model = build()
    return sum(p.numel() for p in model.parameters())


def training_bytes(parameters: int, items: int, hidden: int, layers: int, directions: int = 1) -> int:
    """Weights, gradients and two optimizer moments (fp32), plus a batch's GRU activations (~8 per unit)."""
    return 16 * parameters + 4 * 8 * items * hidden * layers * directions


def check_fits(needed: int, what: str, fix: str) -> None:
    free = available_memory()
    if free is not None and needed > free:
        raise GrutrainError(f"{what} needs about {format_bytes(needed)} of memory, but {format_bytes(free)} is "
                            f"available; {fix}")


def check_model_fits(task, cfg) -> None:
    """Refuse a config whose model (and the activations of one batch) cannot be trained in this memory."""
    try:
        parameters = parameter_count(task.build_model)
    except (RuntimeError, ValueError, OverflowError) as exc:  # a size torch refuses outright
        raise GrutrainError(f"cannot build a model of this size ({str(exc).splitlines()[0][:120]}); "
                            "lower model.hidden_size, model.embedding_dim or model.num_layers") from None
    directions = 2 if getattr(cfg.model, "bidirectional", False) else 1
    items = getattr(task, "items_per_batch", cfg.train.batch_size)  # tokens or time steps in one batch
    needed = training_bytes(parameters, items, cfg.model.hidden_size, cfg.model.num_layers, directions)
    check_fits(needed, f"training this model ({parameters:,} parameters, {items:,} steps a batch)",
               "lower model.hidden_size, model.embedding_dim, model.num_layers or train.batch_size")


def check_model_loads(build, what: str) -> None:
    """Refuse a model (e.g. one a checkpoint's config describes) whose weights alone cannot be held."""
    try:
        parameters = parameter_count(build)
    except (RuntimeError, ValueError, OverflowError) as exc:
        raise GrutrainError(f"{what} asks for a model torch cannot build ({str(exc).splitlines()[0][:120]})") from None
    check_fits(4 * parameters, f"{what} ({parameters:,} parameters)", "use another checkpoint or a larger machine")


def check_gru_shape_fits(steps: int, batch: int, inputs: int, hidden: int) -> None:
    """bench --shape: the timed GRU's weights and a training step's activations."""
    parameters = 3 * hidden * (inputs + hidden + 2)
    needed = 4 * (steps * batch * (inputs + 8 * hidden)) * 3 + 16 * parameters
    check_fits(needed, f"--shape {steps},{batch},{inputs},{hidden}", "give a smaller shape")
