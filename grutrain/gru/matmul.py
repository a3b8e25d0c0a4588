"""The matrix products of the fused GRU (``grutrain.gru.fused``), in float32 or mixed precision.

Mixed precision (``lowp=torch.bfloat16``, chosen by the fused layer under a bfloat16 autocast):
a product's operands are rounded to bfloat16, the product accumulates in float32 inside the GEMM
(oneDNN/MKL on CPU, cuBLAS on CUDA) and its bfloat16 result is ADDED into the caller's float32
buffer, so the hidden state, the gate arithmetic and the sums over time (weight gradients across
chunks) stay float32, the way mixed precision keeps master values. Each product's result carries
one bfloat16 rounding (relative 2^-9), as under plain autocast.

A product takes the bfloat16 route only where it is faster: its inner dimension is at least
``LOWP_MIN_INNER``. Measured on a 2-core AVX512-BF16 EPYC (2 threads, busy machine), one time
step ``acc += h W^T`` with h [B, H]: (32, 512) 428 -> 207 us, (32, 256) 115 -> 88 us, (64, 128)
65 -> 61 us, (256, 32) 16 -> 46 us: below ~256 the two casts and the add cost more than the
faster arithmetic saves (those steps are bound by per-op overhead, not by multiply-adds).

This module, like the rest of the GRU, imports nothing of grutrain.
"""

from __future__ import annotations

import torch
from torch import Tensor

LOWP_MIN_INNER = 256

# --------------------------------------------------------------------------------------------
# The per-step hidden matmul on CPU. MKL's packed GEMM (the weight reordered once per sequence
# with cblas_sgemm_pack, exposed by PyTorch as torch.ops.mkl._mkl_linear and used by Inductor's
# frozen linears) skips re-packing the weight on every step: measured here 15-30% faster per step
# for batch <= 64 and H >= 256 ([32,512]x[512,1536]: 612 -> 438 us), no gain below. It is an
# internal op, so it is used only where it exists (MKL builds, float32, CPU) and any failure falls
# back to addmm for good; CUDA and other dtypes always take the plain addmm path. The bfloat16
# route has oneDNN's counterpart (torch.ops.mkldnn._reorder_linear_weight/_linear_pointwise, also
# Inductor's): [32,512]x[512,1536] 171 -> 141 us, [32,256]x[256,768] 59 -> 45 us.
# --------------------------------------------------------------------------------------------
_PACKED_MIN_HIDDEN = 256
_PACKED_MAX_BATCH = 64
_packed_ok = True
_lowp_packed_ok = True
_MIN_STEPS_TO_PREPARE = 16


def use_lowp(lowp: torch.dtype | None, inner: int) -> bool:
    """Whether a product with this inner dimension takes the low-precision route."""
    return lowp is not None and inner >= LOWP_MIN_INNER


def step_matmul(weight: Tensor, batch: int, max_packed_bytes: float = float("inf"), lowp=None,
                steps: int | None = None):
    """A function ``(acc, h) -> acc += h @ weight.T`` (in place, returns acc) for the time loop.

    weight: [N, K]; h: [batch, K]; acc: [batch, N] (may be a strided view). The packed weight
    is a buffer of its own (~8 MiB + the weight, MKL's size), so it is used only when that is at
    most ``max_packed_bytes``: the training forward passes the size of the gradient buffer its
    backward will allocate anyway, so packing never raises a training step's peak memory.
    ``lowp``: the mixed-precision dtype (see the module docstring), or None for acc's dtype.
    ``steps``: how many times the function will be called (None: many). Packing or rounding the
    weight costs a few steps' products (measured, one thread: packing [768, 256] 160 us against a
    61 us step at batch 1, [1536, 512] ~1.4 ms against 0.2 ms), so under ``_MIN_STEPS_TO_PREPARE``
    steps (generation feeds one token at a time) the weight is used as it is.
    """
    N, K = weight.shape
    prepare = steps is None or steps >= _MIN_STEPS_TO_PREPARE
    if prepare and use_lowp(lowp, K):
        return _lowp_step_matmul(weight, batch, lowp)
    global _packed_ok
    if (
        _packed_ok
        and prepare
        and max_packed_bytes > 0
        and weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and K >= _PACKED_MIN_HIDDEN
        and batch <= _PACKED_MAX_BATCH
        and torch.backends.mkl.is_available()
    ):
        try:
            w = weight.contiguous()
            packed = torch.ops.mkl._mkl_reorder_linear_weight(w, batch)
            linear = torch.ops.mkl._mkl_linear
        except (AttributeError, RuntimeError):  # op missing or unsupported in this build
            _packed_ok = False
        else:
            if packed.numel() * packed.element_size() <= max_packed_bytes:

                def packed_step(acc: Tensor, h: Tensor) -> Tensor:
                    return acc.add_(linear(h, packed, w, None, batch))

                return packed_step
            del packed

    weight_t = weight.t()  # a view: BLAS reads it transposed

    def plain_step(acc: Tensor, h: Tensor) -> Tensor:
        return acc.addmm_(h, weight_t)

    return plain_step


def _lowp_step_matmul(weight: Tensor, batch: int, lowp: torch.dtype):
    global _lowp_packed_ok
    w = weight.to(lowp).contiguous()
    h_low = w.new_empty((batch, w.shape[1]))  # h rounded to lowp, reused every step
    if _lowp_packed_ok and w.device.type == "cpu" and lowp == torch.bfloat16:
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(w, batch)
            linear = torch.ops.mkldnn._linear_pointwise
        except (AttributeError, RuntimeError):  # op missing or unsupported in this build
            _lowp_packed_ok = False
        else:

            def lowp_packed_step(acc: Tensor, h: Tensor) -> Tensor:
                return acc.add_(linear(h_low.copy_(h), packed, None, "none", [], ""))

            return lowp_packed_step
    w_t = w.t()
    product = w.new_empty((batch, w.shape[0]))

    def lowp_step(acc: Tensor, h: Tensor) -> Tensor:
        return acc.add_(torch.mm(h_low.copy_(h), w_t, out=product))

    return lowp_step


_FOLD_BIAS = True


def project(x2: Tensor, targets, lowp=None) -> None:
    """For each (weight, bias, out) in targets: out = x2 @ weight.T + bias, one GEMM each.

    float32: the biases are folded into the GEMMs as a column of ones appended to x2 (built once,
    [T*B, I+1]): addmm(bias, ...) would first copy the broadcast bias into out and then have the
    GEMM read it back, and with a small input size the projection is bound by writing its output,
    so those two extra passes cost more than the arithmetic (measured: [4096,64]x[64,384] 2.27 ms
    with addmm, 1.83 ms folded, single thread). Mixed precision: the bias is added in float32 to
    the product (rounding it to bfloat16 would cost more accuracy than anything else here).
    """
    if use_lowp(lowp, x2.shape[1]):
        x_low = x2.to(lowp)
        for weight, bias, out in targets:
            product = torch.mm(x_low, weight.to(lowp).t())
            if bias is None:
                out.copy_(product)
            else:
                torch.add(product, bias, out=out)
        return
    x_aug = None
    for weight, bias, out in targets:
        if bias is None:
            torch.mm(x2, weight.t(), out=out)
        elif _FOLD_BIAS:
            if x_aug is None:
                x_aug = x2.new_empty((x2.shape[0], x2.shape[1] + 1))
                x_aug[:, :-1].copy_(x2)
                x_aug[:, -1].fill_(1)
            torch.mm(x_aug, torch.cat((weight, bias.unsqueeze(1)), 1).t(), out=out)
        else:
            torch.addmm(bias, x2, weight.t(), out=out)


LOWP_MIN_HIDDEN_BATCHED = 128


def batched_lowp(lowp: torch.dtype | None, hidden: int) -> torch.dtype | None:
    """The dtype of the backward's batched products (weight gradients, dx) at this hidden size.

    Their operands are rounded once per chunk; below H=128 that pass costs more than the faster
    products save (measured (32,256,1,32): a training step 23 -> 30 ms with bfloat16 there)."""
    return lowp if hidden >= LOWP_MIN_HIDDEN_BATCHED else None


def lowered(t: Tensor, lowp) -> Tensor:
    """t rounded to lowp (one copy, contiguous), or t itself when lowp is None."""
    return t if lowp is None else t.to(lowp, memory_format=torch.contiguous_format)


def accumulate_mm(acc: Tensor | None, a: Tensor, b: Tensor, dtype: torch.dtype) -> Tensor:
    """acc + a @ b in ``dtype``, or a @ b when acc is None (first chunk).

    a, b may be low precision (see ``lowered``): the product is then added to the float32 sum."""
    if a.dtype == dtype:
        return torch.mm(a, b) if acc is None else acc.addmm_(a, b)
    product = torch.mm(a, b)
    return product.to(dtype) if acc is None else acc.add_(product)


def mm_into(out: Tensor, a: Tensor, b: Tensor) -> None:
    """out = a @ b; a, b may be low precision (the product is then converted into out)."""
    if a.dtype == out.dtype:
        torch.mm(a, b, out=out)
    else:
        out.copy_(torch.mm(a, b))
