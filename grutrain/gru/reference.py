"""The GRU's equations transcribed step by step: the readable definition every other path is tested against.

One function computes one direction of one layer over a whole time-major sequence,

    r = sigmoid(x W_ir^T + b_ir + h W_hr^T + b_hr)
    z = sigmoid(x W_iz^T + b_iz + h W_hz^T + b_hz)
    n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn))      reset="after"  (torch.nn.GRU, cuDNN)
    n = tanh(x W_in^T + b_in + (r * h) W_hn^T + b_hn)      reset="before" (d2l.ai, Cho et al. 2014)
    h' = z * h + (1 - z) * n

as a Python loop (``reference_gru_layer``), compiled by TorchScript (``scripted_loop``, for
torch.jit.trace) or as torch's ``scan`` (``scan_layer``, for torch.export). Imports nothing of grutrain.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

LayerFunction = Callable[..., tuple[Tensor, Tensor]]

RESETS = ("after", "before")


class GRUInputError(ValueError, RuntimeError):
    """A bad argument or input of the GRU.

    Both a ValueError (what grutrain always raised) and a RuntimeError (what torch.nn.GRU raises
    for most shape errors), so code written for either type keeps catching it.
    """


def one_of(names) -> str:
    """'a', 'b' or 'c': the allowed values in an error message."""
    quoted = [repr(name) for name in names]
    return " or ".join([", ".join(quoted[:-1]), quoted[-1]] if len(quoted) > 1 else quoted)


def check_reset(reset: str) -> None:
    if reset not in RESETS:
        raise GRUInputError(f"reset must be {one_of(RESETS)}, got {reset!r}")


def reference_gru_layer(
    x: Tensor,
    h0: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
    reset: str = "after",
) -> tuple[Tensor, Tensor]:
    """Run one direction of one GRU layer over a time-major sequence, one step at a time.

    Args:
        x: input, [T, B, I].
        h0: initial state, [B, H].
        weight_ih: [3H, I], rows ordered r, z, n (W_ir | W_iz | W_in), as in torch.nn.GRU.
        weight_hh: [3H, H], rows ordered r, z, n (W_hr | W_hz | W_hn).
        bias_ih, bias_hh: [3H] (b_ir | b_iz | b_in and b_hr | b_hz | b_hn), or None for no bias.
        reset: where the reset gate acts in the candidate n:
            "after":  n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn))   (torch.nn.GRU, cuDNN)
            "before": n = tanh(x W_in^T + b_in + (r * h) W_hn^T + b_hn)   (original paper, d2l.ai)

    Returns:
        (output [T, B, H], the state at every step; h_T [B, H], the last state).
    """
    check_reset(reset)
    return _reference_loop(x, h0, weight_ih, weight_hh, bias_ih, bias_hh, reset)


def _reference_loop(
    x: Tensor,
    h0: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    reset: str,
) -> tuple[Tensor, Tensor]:
    """reference_gru_layer's loop. Written so TorchScript can compile it: a jit-traced GRU calls
    the compiled loop and so runs at any sequence length (see ``scripted_loop``)."""
    # The input projections don't depend on the state, so all steps share one matmul.
    x_proj = F.linear(x, weight_ih, bias_ih)  # [T, B, 3H]
    h = h0  # [B, H]
    outputs = []
    # unbind gives every step its own view; indexing x_proj[t] in the loop would make each
    # step's backward scatter into a full [T, B, 3H] buffer, O(T^2) in total.
    for x_t in x_proj.unbind(0):  # x_t: [B, 3H]
        h = _reference_step(x_t, h, weight_hh, bias_hh, reset)
        outputs.append(h)
    return torch.stack(outputs), h  # [T, B, H], [B, H]


def _reference_step(x_t: Tensor, h: Tensor, weight_hh: Tensor, bias_hh: Tensor | None, reset: str) -> Tensor:
    """One step of the equations: x_t = x W_ih^T + b_ih [B, 3H] (r, z, n), h [B, H] -> h' [B, H]."""
    hidden_size = h.shape[1]
    x_r, x_z, x_n = x_t.chunk(3, dim=1)  # each [B, H]
    if reset == "after":
        h_r, h_z, h_n = F.linear(h, weight_hh, bias_hh).chunk(3, dim=1)  # each [B, H]
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
    else:
        # r must multiply h before W_hn, so the n rows get their own matmul on r * h.
        w_hrz, w_hn = weight_hh[: 2 * hidden_size], weight_hh[2 * hidden_size :]  # [2H, H], [H, H]
        b_hrz: Tensor | None = None
        b_hn: Tensor | None = None
        if bias_hh is not None:
            b_hrz, b_hn = bias_hh[: 2 * hidden_size], bias_hh[2 * hidden_size :]
        h_r, h_z = F.linear(h, w_hrz, b_hrz).chunk(2, dim=1)  # each [B, H]
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + F.linear(r * h, w_hn, b_hn))
    return z * h + (1 - z) * n  # [B, H]


def scan_layer(
    x: Tensor,
    h0: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
    reset: str = "after",
) -> tuple[Tensor, Tensor]:
    """The reference equations with the time loop as torch's ``scan``, for torch.export: the
    exported program then takes any sequence length, where the Python loop would be unrolled."""
    from torch._higher_order_ops.scan import scan  # checked by scan_available

    x_proj = F.linear(x, weight_ih, bias_ih)  # [T, B, 3H]

    def step(h: Tensor, x_t: Tensor) -> tuple[Tensor, Tensor]:
        h_new = _reference_step(x_t, h, weight_hh, bias_hh, reset)
        return h_new, h_new.clone()  # scan wants the carry and the output as separate tensors

    h_last, output = scan(step, h0, x_proj)
    return output, h_last  # [T, B, H], [B, H]


_scripted = None


def scripted_loop() -> LayerFunction:
    """_reference_loop compiled by TorchScript (once). torch.jit.trace records a call to it with
    its loop intact, where tracing the Python loop would bake in the example's length."""
    global _scripted
    if _scripted is None:
        with warnings.catch_warnings():  # torch.jit.script's deprecation: the caller chose jit
            warnings.simplefilter("ignore", DeprecationWarning)
            _scripted = torch.jit.script(_reference_loop)
    return _scripted


def scripted_layer(*args, **kwargs) -> tuple[Tensor, Tensor]:
    """``scripted_loop()``, compiled on first use: the layer function for torch.jit.trace (all six
    tensor arguments positional, as the GRU module passes them, and ``reset``)."""
    return scripted_loop()(*args, **kwargs)


def scan_available() -> bool:
    try:
        from torch._higher_order_ops.scan import scan  # noqa: F401  (torch >= 2.6)
    except ImportError:
        return False
    return True


def autocast_enabled(device_type: str) -> bool:
    """Whether torch.autocast is on for this device type (shared by the module and the fused path)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no device type
        return torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()
