"""Which implementation runs a GRU layer in the current context: the registry of layer functions.

An implementation is a function that runs one direction of one layer over a whole time-major
sequence, with ``reference.reference_gru_layer``'s signature and results, plus what the GRU
module needs to know about it: where it can run, whether this process has it, which tensors it
takes. ``IMPLEMENTATIONS`` lists them in order of preference; adding a kernel is one module
under ``grutrain/gru/`` and one line there (docs/adding-a-gru-kernel.md).

The contexts: plain PyTorch (``eager``) and the recorders of code written for torch.nn.GRU:
``torch.jit.trace`` (``trace``), ``torch.export`` (``export``), ``torch.compile`` (``compile``) and
the ``torch.func`` transforms (``functorch``). The fused path is a hand-written autograd.Function
over in-place kernels that none of them can record; under them the reference equations run in a
form each records whole: compiled by TorchScript for a tracer, with the time loop as torch's
``scan`` for torch.export (so an exported program takes any sequence length), op by op for the
compiler and torch.func.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from grutrain.gru import native
from grutrain.gru.fused import fused_gru_layer
from grutrain.gru.reference import LayerFunction, reference_gru_layer, scan_available, scan_layer, scripted_layer

CONTEXTS = ("eager", "trace", "export", "compile", "functorch")


def _always() -> bool:
    return True


def _any_tensor(x: Tensor) -> bool:
    return True


@dataclass(frozen=True)
class Implementation:
    """A layer function and what path selection needs to know about it.

    name: what ``GRU(impl=...)`` calls it (when ``selectable``).
    layer: one direction of one layer, ``(x [T, B, I], h0 [B, H], weight_ih, weight_hh, bias_ih,
        bias_hh, reset=) -> (output [T, B, H], h_T [B, H])``, as ``reference_gru_layer``.
    runs_in: the contexts (of CONTEXTS) it can run in.
    selectable: a name a GRU may ask for; False for a form of the reference equations that only a
        context picks (scan for torch.export, TorchScript for torch.jit.trace).
    available: whether this process has it (a native kernel that failed to build does not);
        called on each selection, so it should answer from a cache after the first call.
    supports: whether it takes this input (device, dtype); the input's own tensor, [T, B, I].
    output_is_saved_state: its output is the buffer its backward reads the states from, so the
        module hands the caller a copy to change in place (ReLU(inplace=True), out += ...).
    cell: one step without autograd, ``(x_t [B, I], h [B, H], weight_ih, weight_hh, bias_ih, bias_hh,
        reset=) -> h' [B, H]`` (generation, ``GRU.step``); None: the layer runs on one step instead.
    """

    name: str
    layer: LayerFunction
    runs_in: frozenset[str]
    selectable: bool = True
    available: Callable[[], bool] = _always
    supports: Callable[[Tensor], bool] = _any_tensor
    output_is_saved_state: bool = False
    cell: Callable[..., Tensor] | None = None


# In order of preference: when the implementation a GRU asks for can't run here, the first one
# that can does (and if none can, the reference equations op by op, which every recorder records,
# though a tracer unrolls their loop to the example's length).
IMPLEMENTATIONS: tuple[Implementation, ...] = (
    # The C++ kernel, built on first use (native.available() prints one line when it can't be had).
    Implementation("native", native.native_gru_layer, frozenset({"eager"}), available=native.available,
                   supports=native.supports, output_is_saved_state=True, cell=native.native_gru_cell),
    Implementation("fused", fused_gru_layer, frozenset({"eager"}), output_is_saved_state=True),
    Implementation("reference", reference_gru_layer, frozenset({"eager", "compile", "functorch"})),
    Implementation("scan", scan_layer, frozenset({"export"}), selectable=False,
                   available=functools.cache(scan_available)),
    Implementation("scripted", scripted_layer, frozenset({"trace"}), selectable=False),
)

IMPLS = tuple(impl.name for impl in IMPLEMENTATIONS if impl.selectable)  # what GRU(impl=...) takes


def implementation(name: str) -> Implementation:
    """The registered implementation called `name` (KeyError for an unknown one)."""
    for impl in IMPLEMENTATIONS:
        if impl.name == name:
            return impl
    raise KeyError(name)


def is_exporting() -> bool:
    """torch.export is recording this call (a check that reads a tensor's values can't run then)."""
    compiler = getattr(torch, "compiler", None)
    return bool(getattr(compiler, "is_exporting", lambda: False)())


def _is_compiling() -> bool:
    """torch.compile (dynamo) is recording this call."""
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())


def _functorch_active() -> bool:
    """A torch.func transform (grad, vmap, jacrev, ...) wraps this call."""
    try:
        return torch._C._functorch.peek_interpreter_stack() is not None
    except AttributeError:  # a torch without functorch's interpreter stack
        return False


def current_context() -> str:
    """Which of CONTEXTS this call runs in."""
    if torch.jit.is_tracing():
        return "trace"
    if is_exporting():
        return "export"
    if _is_compiling():
        return "compile"
    if _functorch_active():
        return "functorch"
    return "eager"


def _runs(impl: Implementation, context: str, x: Tensor | None) -> bool:
    return context in impl.runs_in and impl.available() and (x is None or impl.supports(x))


def select(impl: str, x: Tensor | None = None) -> Implementation:
    """The implementation that runs a layer for a GRU asking for `impl`, here and on input `x`.

    `impl` itself when it is available, runs in the current context and takes `x`; otherwise the
    first of IMPLEMENTATIONS that does; otherwise the reference equations.
    """
    context = current_context()
    wanted = implementation(impl)
    if _runs(wanted, context, x):
        return wanted
    return next((other for other in IMPLEMENTATIONS if _runs(other, context, x)), implementation("reference"))


def layer_function(impl: str) -> LayerFunction:
    """The function that runs one direction of one layer for ``impl`` in the current context."""
    return select(impl).layer
