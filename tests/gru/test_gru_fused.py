"""fused_gru_layer against independent references: a naive step-by-step transcription of the
equations (written here, gate by gate), torch.nn.GRU, and finite differences (gradcheck)."""

from __future__ import annotations

import pytest
import torch

import grutrain.gru.fused as gf
import grutrain.gru.fused_backward as gfb
import grutrain.gru.matmul as gm
from grutrain.gru.fused import fused_gru_layer

TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-10, rtol=1e-10)}


def naive_gru(x, h0, w_ih, w_hh, b_ih, b_hh, reset):
    """The GRU equations, one gate and one step at a time, with W_ir/W_iz/W_in sliced out."""
    H = w_hh.shape[1]
    W_ir, W_iz, W_in = w_ih[:H], w_ih[H : 2 * H], w_ih[2 * H :]
    W_hr, W_hz, W_hn = w_hh[:H], w_hh[H : 2 * H], w_hh[2 * H :]

    def b(v, k):
        return 0.0 if v is None else v[k * H : (k + 1) * H]

    h, outs = h0, []
    for t in range(x.shape[0]):
        xt = x[t]
        r = torch.sigmoid(xt @ W_ir.T + b(b_ih, 0) + h @ W_hr.T + b(b_hh, 0))
        z = torch.sigmoid(xt @ W_iz.T + b(b_ih, 1) + h @ W_hz.T + b(b_hh, 1))
        if reset == "after":
            n = torch.tanh(xt @ W_in.T + b(b_ih, 2) + r * (h @ W_hn.T + b(b_hh, 2)))
        else:
            n = torch.tanh(xt @ W_in.T + b(b_ih, 2) + (r * h) @ W_hn.T + b(b_hh, 2))
        h = z * h + (1 - z) * n
        outs.append(h)
    return torch.stack(outs), h


def make_inputs(T, B, I, H, dtype=torch.float32, bias=True, h0_grad=True, x_grad=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = H**-0.5  # nn.GRU's init range

    def u(*shape):
        return (torch.rand(*shape, generator=g, dtype=dtype) * 2 - 1) * k

    x = torch.randn(T, B, I, generator=g, dtype=dtype).requires_grad_(x_grad)
    h0 = (torch.randn(B, H, generator=g, dtype=dtype) * 0.5).requires_grad_(h0_grad)
    w_ih, w_hh = u(3 * H, I).requires_grad_(), u(3 * H, H).requires_grad_()
    b_ih = u(3 * H).requires_grad_() if bias else None
    b_hh = u(3 * H).requires_grad_() if bias else None
    return [x, h0, w_ih, w_hh, b_ih, b_hh]


def run_with_grads(fn, inputs, reset, seed=1):
    """Outputs, h_T and the gradients of every input that requires grad, for a random loss
    that uses both the output sequence and h_T."""
    out, h_T = fn(*inputs, reset=reset)
    g = torch.Generator().manual_seed(seed)
    loss = (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum() + (
        h_T * torch.randn(h_T.shape, generator=g, dtype=h_T.dtype)
    ).sum()
    leaves = [t for t in inputs if t is not None and t.requires_grad]
    grads = torch.autograd.grad(loss, leaves)
    return [out, h_T, *grads]


def assert_all_close(actual, expected, dtype):
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        torch.testing.assert_close(a, e, **TOL[dtype], msg=lambda m: f"tensor {i}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("h0_grad", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("reset", ["after", "before"])
def test_matches_naive_equations(reset, bias, h0_grad, dtype):
    inputs = make_inputs(6, 3, 5, 7, dtype=dtype, bias=bias, h0_grad=h0_grad)
    expected = run_with_grads(naive_gru, inputs, reset)
    actual = run_with_grads(fused_gru_layer, inputs, reset)
    assert_all_close(actual, expected, dtype)
    if not h0_grad:
        assert inputs[1].grad is None


@pytest.mark.parametrize("reset", ["after", "before"])
def test_one_bias_only(reset):
    for keep in (4, 5):  # bias_ih only, then bias_hh only
        inputs = make_inputs(4, 2, 3, 5, dtype=torch.float64)
        inputs[9 - keep] = None
        assert_all_close(
            run_with_grads(fused_gru_layer, inputs, reset),
            run_with_grads(naive_gru, inputs, reset),
            torch.float64,
        )


@pytest.mark.parametrize("reset", ["after", "before"])
def test_single_step(reset):
    inputs = make_inputs(1, 4, 3, 5, dtype=torch.float64)
    assert_all_close(
        run_with_grads(fused_gru_layer, inputs, reset), run_with_grads(naive_gru, inputs, reset), torch.float64
    )


@pytest.mark.parametrize("reset", ["after", "before"])
def test_long_sequences_split_into_chunks_and_blocks(monkeypatch, reset):
    """Tiny caps force several time chunks (forward and backward) and gradient sub-blocks."""
    inputs = make_inputs(11, 3, 4, 5, dtype=torch.float64)
    expected = run_with_grads(naive_gru, inputs, reset)
    row = 3 * 3 * 5 * 8  # bytes of one step of the [B, 3H] gate buffer
    for chunk_steps, block_steps in [(1, 1), (3, 2), (4, 4), (100, 3)]:
        monkeypatch.setattr(gf, "_CHUNK_BYTES", chunk_steps * row)
        monkeypatch.setattr(gfb, "_BLOCK_BYTES", block_steps * row)
        assert len(gf._chunks(11, row)) == -(-11 // chunk_steps)
        assert_all_close(run_with_grads(fused_gru_layer, inputs, reset), expected, torch.float64)
        with torch.no_grad():
            out, h_T = fused_gru_layer(*inputs, reset=reset)
        assert_all_close([out, h_T], expected[:2], torch.float64)


def test_matches_torch_nn_gru():
    torch.manual_seed(0)
    T, B, I, H = 7, 4, 5, 6
    ref = torch.nn.GRU(I, H)
    x = torch.randn(T, B, I, requires_grad=True)
    h0 = torch.randn(1, B, H, requires_grad=True)
    weights = [torch.nn.Parameter(p.detach().clone()) for p in ref.parameters()]  # ih, hh, b_ih, b_hh

    out_ref, hn_ref = ref(x, h0)
    out, h_T = fused_gru_layer(x, h0[0], *weights, reset="after")
    torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h_T, hn_ref[0], atol=1e-5, rtol=1e-5)

    go, gh = torch.randn_like(out), torch.randn_like(h_T)
    expected = torch.autograd.grad((out_ref * go).sum() + (hn_ref[0] * gh).sum(), [x, h0, *ref.parameters()])
    actual = torch.autograd.grad((out * go).sum() + (h_T * gh).sum(), [x, h0, *weights])
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e.reshape(a.shape), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("reset", ["after", "before"])
def test_gradcheck_float64(reset):
    inputs = tuple(make_inputs(4, 2, 3, 4, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda *a: fused_gru_layer(*a, reset=reset), inputs)


@pytest.mark.parametrize("reset", ["after", "before"])
def test_bf16_autocast_cpu_close_to_float32(reset):
    inputs = make_inputs(8, 4, 6, 16)
    expected = run_with_grads(fused_gru_layer, inputs, reset)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # Inputs from earlier autocast layers arrive in bf16; state and gates stay float32 inside.
        x_bf16 = inputs[0].detach().to(torch.bfloat16).requires_grad_()
        out, h_T = fused_gru_layer(x_bf16, *inputs[1:], reset=reset)
        torch_out, torch_h = torch.nn.GRU(6, 16)(x_bf16)
    # The output dtype is torch.nn.GRU's under the same autocast (bf16 in, bf16 out on CPU).
    assert out.dtype == torch_out.dtype == torch.bfloat16 and h_T.dtype == torch_h.dtype
    g = torch.Generator().manual_seed(1)
    loss = (out * torch.randn(out.shape, generator=g)).sum() + (h_T * torch.randn(h_T.shape, generator=g)).sum()
    grads = torch.autograd.grad(loss, [x_bf16, *inputs[1:]])
    assert grads[0].dtype == torch.bfloat16  # flows back through the cast to the bf16 input
    actual = [out, h_T, *grads]
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a.float(), e, atol=5e-2, rtol=5e-2)


def test_no_grad_forward_builds_no_graph_and_matches():
    inputs = make_inputs(5, 3, 4, 6)
    out_grad, h_grad = fused_gru_layer(*inputs)
    with torch.no_grad():
        out, h_T = fused_gru_layer(*inputs)
    assert out.grad_fn is None and h_T.grad_fn is None
    torch.testing.assert_close(out, out_grad.detach(), atol=0, rtol=0)
    torch.testing.assert_close(h_T, h_grad.detach(), atol=0, rtol=0)
    assert out.shape == (5, 3, 6) and out.is_contiguous()


def test_only_requested_gradients_are_computed():
    x, h0, w_ih, w_hh, b_ih, b_hh = make_inputs(5, 3, 4, 6, dtype=torch.float64, h0_grad=False, x_grad=False)
    w_ih.requires_grad_(False)  # a frozen input projection
    out, h_T = fused_gru_layer(x, h0, w_ih, w_hh, b_ih, b_hh)
    (out.sum() + h_T.sum()).backward()
    assert x.grad is None and h0.grad is None and w_ih.grad is None
    ref = [t.detach().clone().requires_grad_(t.requires_grad) for t in (x, h0, w_ih, w_hh, b_ih, b_hh)]
    out_ref, h_ref = naive_gru(*ref, "after")
    (out_ref.sum() + h_ref.sum()).backward()
    for mine, theirs in zip((w_hh, b_ih, b_hh), ref[3:]):
        torch.testing.assert_close(mine.grad, theirs.grad, **TOL[torch.float64])


def test_non_contiguous_input_and_default_h0():
    x, _, w_ih, w_hh, b_ih, b_hh = make_inputs(5, 3, 4, 6, dtype=torch.float64)
    x_bt = x.detach().transpose(0, 1).contiguous().requires_grad_()  # [B, T, I]
    out, h_T = fused_gru_layer(x_bt.transpose(0, 1), None, w_ih, w_hh, b_ih, b_hh)
    out_ref, h_ref = naive_gru(x, torch.zeros(3, 6, dtype=torch.float64), w_ih, w_hh, b_ih, b_hh, "after")
    torch.testing.assert_close(out, out_ref, **TOL[torch.float64])
    torch.testing.assert_close(h_T, h_ref, **TOL[torch.float64])
    (g,) = torch.autograd.grad(out.sum(), x_bt)
    (g_ref,) = torch.autograd.grad(out_ref.sum(), x)
    torch.testing.assert_close(g, g_ref.transpose(0, 1), **TOL[torch.float64])


def test_in_place_change_of_output_is_caught():
    inputs = make_inputs(3, 2, 3, 4)
    out, _ = fused_gru_layer(*inputs)
    out.add_(1)  # allowed like on any tensor, but the backward needs the unmodified states
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_rejects_unknown_reset():
    with pytest.raises(ValueError, match="reset"):
        fused_gru_layer(*make_inputs(2, 1, 2, 3), reset="middle")


mkl_packed = pytest.mark.skipif(
    not (torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")),
    reason="MKL packed GEMM not in this build",
)


@mkl_packed
def test_packed_step_matmul_matches_addmm():
    torch.manual_seed(0)
    B, H = 8, 256
    w = torch.randn(3 * H, H) * H**-0.5
    h = torch.randn(B, H)
    acc = torch.randn(B, 4 * H)[:, H:]  # a strided window, as in the time loop
    expected = acc + h @ w.T
    step = gm.step_matmul(w, B)
    assert step.__name__ == "packed_step"
    torch.testing.assert_close(step(acc, h), expected, atol=1e-4, rtol=1e-4)
    assert gm.step_matmul(w, B, max_packed_bytes=1024).__name__ == "plain_step"
    assert gm.step_matmul(w.double(), B).__name__ == "plain_step"


@mkl_packed
@pytest.mark.parametrize("reset", ["after", "before"])
def test_packed_path_end_to_end(monkeypatch, reset):
    monkeypatch.setattr(gm, "_PACKED_MIN_HIDDEN", 1)
    monkeypatch.setattr(gm, "_MIN_STEPS_TO_PREPARE", 1)
    inputs = make_inputs(5, 3, 4, 8)
    expected = run_with_grads(naive_gru, inputs, reset)
    with torch.no_grad():  # no memory budget here, so the packed path runs
        out, h_T = fused_gru_layer(*inputs, reset=reset)
    assert_all_close([out, h_T], expected[:2], torch.float32)
    for module in (gf, gfb):  # the forward's and the backward's per-step products
        monkeypatch.setattr(module, "step_matmul", lambda w, b, *args, **kwargs: _force_packed(w, b))
    assert_all_close(run_with_grads(fused_gru_layer, inputs, reset), expected, torch.float32)


def _force_packed(weight, batch):
    step = _ORIGINAL_STEP_MATMUL(weight, batch)
    assert step.__name__ == "packed_step"
    return step


_ORIGINAL_STEP_MATMUL = gm.step_matmul
