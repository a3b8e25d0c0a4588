"""The fused GRU's mixed-precision (bfloat16) path against float32, and the no-grad path against
the training path. Speed is the benchmark's business (grutrain bench --precision bf16), not a test's."""

from __future__ import annotations

import pytest
import torch

import grutrain.gru.fused as gf
import grutrain.gru.matmul as gm
from grutrain.errors import GrutrainError
from grutrain.gru.fused import fused_gru_layer
from grutrain.runtime import autocast_dtype, cpu_supports_bf16

from test_gru_fused import make_inputs, run_with_grads

# H and I at least gm.LOWP_MIN_INNER, so every product (input projection, per-step hidden matmul
# forward and backward, weight gradients, dx) takes the bfloat16 route.
T, B, I, H = 12, 8, 256, 256


def bf16_run(inputs, reset):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return run_with_grads(fused_gru_layer, inputs, reset)


def max_rel_error(actual, expected):
    with torch.no_grad():
        return max(float((a.float() - e).abs().max() / e.abs().max()) for a, e in zip(actual, expected))


@pytest.mark.parametrize("reset", ["after", "before"])
def test_bf16_products_stay_close_to_float32(reset):
    inputs = make_inputs(T, B, I, H)
    expected = run_with_grads(fused_gru_layer, inputs, reset)
    actual = bf16_run(inputs, reset)
    assert [a.dtype for a in actual] == [torch.float32] * len(expected)  # fp32 in: fp32 out, fp32 grads
    # Tolerance: every product's operands and result are rounded to bfloat16 (8-bit mantissa,
    # relative 2^-9 each); summed over K=256 terms of mixed sign, a product's error is ~2^-8 of
    # its largest terms, and the state, gates and sums over time stay float32, so the error does
    # not compound across the 12 steps: 3e-2 of each tensor's largest entry leaves a 4-8x margin
    # over what was measured (1-6e-3), while an error in the math (a wrong gate, a missed
    # accumulation) would be O(1).
    for i, (a, e) in enumerate(zip(actual, expected)):
        scale = float(e.detach().abs().max())
        torch.testing.assert_close(a, e, atol=3e-2 * scale, rtol=0, msg=lambda m: f"tensor {i}: {m}")
    # ... and the bfloat16 route was really taken (float32 would agree to ~1e-6).
    assert max_rel_error(actual, expected) > 1e-4


def test_float32_state_beats_an_all_bf16_gru():
    """Keeping the state and gates in float32 is why the path exists: its output is closer to the
    float32 result than torch.nn.GRU run entirely in bfloat16 (weights, input, state)."""
    torch.manual_seed(0)
    gru = torch.nn.GRU(I, H)
    x = torch.randn(64, B, I)
    params = [gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0]
    with torch.no_grad():
        expected, _ = gru(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed, _ = fused_gru_layer(x, None, *params)
        all_bf16, _ = gru.to(torch.bfloat16)(x.to(torch.bfloat16))
    mixed_error = (mixed - expected).abs().max()
    all_bf16_error = (all_bf16.float() - expected).abs().max()
    assert 0 < mixed_error < all_bf16_error / 2


def test_output_dtype_is_torch_grus_under_autocast():
    inputs = make_inputs(3, 2, 4, 8)
    gru = torch.nn.GRU(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for x in (inputs[0], inputs[0].detach().to(torch.bfloat16)):
            out, h_T = fused_gru_layer(x, *inputs[1:])
            torch_out, torch_h = gru(x)
            assert (out.dtype, h_T.dtype) == (torch_out.dtype, torch_h.dtype)


def test_lowp_step_matmul_is_chosen_only_where_it_pays():
    w = torch.randn(3 * H, H) * H**-0.5  # products of magnitude ~1
    assert gm.step_matmul(w, B, lowp=torch.bfloat16).__name__ in ("lowp_packed_step", "lowp_step")
    small = torch.randn(96, 32)
    assert gm.step_matmul(small, B, lowp=torch.bfloat16).__name__ == "plain_step"
    h, acc = torch.randn(B, H), torch.randn(B, 4 * H)[:, H:]
    expected = acc + h @ w.T
    step = gm.step_matmul(w, B, lowp=torch.bfloat16)
    torch.testing.assert_close(step(acc.clone(), h), expected, atol=3e-2, rtol=0)  # ~2^-8 of ~4


@pytest.mark.parametrize("precision", [None, torch.bfloat16])
@pytest.mark.parametrize("reset", ["after", "before"])
def test_no_grad_path_matches_training_path(monkeypatch, reset, precision):
    # Small chunks, so the no-grad path's reused chunk buffer is exercised across several chunks.
    monkeypatch.setattr(gf, "_CHUNK_BYTES", B * 3 * H * 4 * 5)
    inputs = make_inputs(T, B, I, H)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision is not None):
        out_train, h_train = fused_gru_layer(*inputs, reset=reset)
        with torch.no_grad():
            out, h_T = fused_gru_layer(*inputs, reset=reset)
    assert out_train.grad_fn is not None and out.grad_fn is None
    # Same kernel; only the GEMM may differ (training packs the weight only within its memory
    # budget, here too small for MKL's packed copy), so agreement to float32 rounding.
    torch.testing.assert_close(out, out_train.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h_T, h_train.detach(), atol=1e-5, rtol=1e-5)


def test_bf16_precision_on_cpu(monkeypatch):
    import grutrain.runtime as runtime

    cpu = torch.device("cpu")
    if cpu_supports_bf16():
        assert autocast_dtype("bf16", cpu) == torch.bfloat16
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: False)
    with pytest.raises(GrutrainError, match="bfloat16.*train.precision=fp32"):
        autocast_dtype("bf16", cpu)
    with pytest.raises(GrutrainError, match="CUDA"):
        autocast_dtype("fp16", cpu)


@pytest.mark.parametrize("reset", ["after", "before"])
@pytest.mark.parametrize("steps", [1, 3])
def test_few_steps_no_grad_path_matches_training_path(reset, steps):
    """Generation's path (no grad, a few steps: the plain cell) against the training kernel."""
    inputs = make_inputs(steps, 2, 5, 7)
    out_train, h_train = fused_gru_layer(*inputs, reset=reset)
    with torch.no_grad():
        out, h_T = fused_gru_layer(*inputs, reset=reset)
    assert steps <= gf._FEW_STEPS and out.grad_fn is None
    # The bias is added after the GEMM here and folded into it there: float32 rounding apart.
    torch.testing.assert_close(out, out_train.detach(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(h_T, h_train.detach(), atol=1e-6, rtol=1e-5)


def test_preparing_the_weight_is_skipped_for_a_few_steps():
    w = torch.randn(3 * H, H)
    assert gm.step_matmul(w, 1, lowp=torch.bfloat16, steps=1).__name__ == "plain_step"
    assert gm.step_matmul(w, 1, steps=1).__name__ == "plain_step"
