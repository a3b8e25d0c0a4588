"""Which implementation runs a GRU layer in the current context.

The fused path (gru_fused) is a hand-written autograd.Function over in-place kernels, which
tracers, compilers and torch.func transforms cannot record; under them the reference equations
run instead (gru_reference), so code written for torch.nn.GRU keeps working.
"""

from __future__ import annotations

import torch

from grutrain.gru.fused import fused_gru_layer
from grutrain.gru.reference import LayerFunction, reference_gru_layer, scan_available, scan_layer, scripted_loop

IMPLS = ("fused", "reference")


def _is_exporting() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(getattr(compiler, "is_exporting", lambda: False)())


def _is_compiling() -> bool:
    """torch.compile (dynamo) or torch.export is recording this call."""
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling()) or _is_exporting()


def _functorch_active() -> bool:
    """A torch.func transform (grad, vmap, jacrev, ...) wraps this call."""
    try:
        return torch._C._functorch.peek_interpreter_stack() is not None
    except AttributeError:  # a torch without functorch's interpreter stack
        return False


def layer_function(impl: str) -> LayerFunction:
    """The function that runs one direction of one layer for ``impl`` in the current context.

    The fused path is a hand-written autograd.Function over in-place kernels, which tracers,
    compilers and torch.func transforms cannot record; under them the reference equations run
    (the same function, recorded op by op), so code written for torch.nn.GRU keeps working.
    """
    if torch.jit.is_tracing():
        return scripted_loop()
    if _is_exporting() and scan_available():
        return scan_layer
    if impl == "reference" or _is_compiling() or _functorch_active():
        return reference_gru_layer
    return fused_gru_layer
