"""The native GRU kernel (grutrain/gru/native.py + csrc/) against independent references: a naive
step-by-step transcription of the equations (gate by gate), torch.nn.GRU, finite differences
(gradcheck, gradgradcheck), float32 for the bfloat16 route; the cell against the layer; the
loader's fallback (no compiler, a failed build, no AVX2) and its file lock (concurrent first use
builds once).

One build is shared by every test (conftest.py's session cache, GRUTRAIN_KERNEL_DIR); the tests of
the loader itself run subprocesses with fresh kernel directories. The conformance of the GRU module
on the native path is in test_gru_conformance.py, test_gru.py and test_gru_lengths.py (they run
every implementation of the registry). The cases parametrised by device run on CUDA too when a
CUDA kernel is registered and a GPU is present.
"""

from __future__ import annotations

import os
import platform
import random
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from grutrain.gru import GRU
from grutrain.gru import native as native_module

TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-10, rtol=1e-10)}


@pytest.fixture(scope="session")
def native():
    if not native_module.load():
        pytest.skip(f"native kernel unavailable: {native_module.status()['reason']}")
    return native_module


@pytest.fixture(params=["cpu", "cuda"])
def device(request, native):
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA not available")
    if not torch._C._dispatch_has_kernel_for_dispatch_key(
        f"{native.LIBRARY}::gru_layer", request.param.upper()
    ):
        pytest.skip(f"no {request.param} kernel registered")
    return torch.device(request.param)


@pytest.fixture
def tune(native):
    """Set CPU tuning knobs for one test; restored afterwards."""
    changed = {}

    def set_knob(name, value):
        old = torch.ops.grutrain_native.cpu_tune(name, value)
        changed.setdefault(name, old)

    yield set_knob
    for name, old in changed.items():
        torch.ops.grutrain_native.cpu_tune(name, old)


@pytest.fixture
def threads():
    """Set torch's thread count for one test; restored afterwards."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


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


def make_inputs(T, B, I, H, dtype=torch.float32, bias=True, h0_grad=True, x_grad=True, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    k = H**-0.5  # nn.GRU's init range

    def u(*shape):
        return ((torch.rand(*shape, generator=g, dtype=dtype) * 2 - 1) * k).to(device)

    x = torch.randn(T, B, I, generator=g, dtype=dtype).to(device).requires_grad_(x_grad)
    h0 = (torch.randn(B, H, generator=g, dtype=dtype) * 0.5).to(device).requires_grad_(h0_grad)
    w_ih, w_hh = u(3 * H, I).requires_grad_(), u(3 * H, H).requires_grad_()
    b_ih = u(3 * H).requires_grad_() if bias else None
    b_hh = u(3 * H).requires_grad_() if bias else None
    return [x, h0, w_ih, w_hh, b_ih, b_hh]


def run_with_grads(fn, inputs, reset, seed=1):
    """Outputs, h_T and the gradients of every input that requires grad, for a random loss that
    uses both the output sequence and h_T."""
    out, h_T = fn(*inputs, reset=reset)
    g = torch.Generator().manual_seed(seed)
    loss = (out * torch.randn(out.shape, generator=g, dtype=out.dtype).to(out.device)).sum() + (
        h_T * torch.randn(h_T.shape, generator=g, dtype=h_T.dtype).to(out.device)
    ).sum()
    leaves = [t for t in inputs if t is not None and t.requires_grad]
    grads = torch.autograd.grad(loss, leaves)
    return [out, h_T, *grads]


def assert_all_close(actual, expected, dtype, **tol):
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        torch.testing.assert_close(a, e, **(tol or TOL[dtype]), msg=lambda m: f"tensor {i}: {m}")


def assert_matches_in_chunks(native, tune, inputs, expected, reset, row_bytes, chunk_steps):
    """Training and no-grad alike equal `expected` (float64) with both chunk caps at each number of
    steps of `row_bytes` (bytes of one step of the widest buffer)."""
    for steps in chunk_steps:
        tune("chunk_bytes", steps * row_bytes)
        tune("infer_chunk_bytes", steps * row_bytes)
        assert_all_close(run_with_grads(native.native_gru_layer, inputs, reset), expected, torch.float64)
        with torch.no_grad():
            out, h_T = native.native_gru_layer(*inputs, reset=reset)
        assert_all_close([out, h_T], expected[:2], torch.float64)


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("h0_grad", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("reset", ["after", "before"])
def test_matches_naive_equations(native, device, reset, bias, h0_grad, dtype):
    inputs = make_inputs(6, 3, 5, 7, dtype=dtype, bias=bias, h0_grad=h0_grad, device=device)
    expected = run_with_grads(naive_gru, inputs, reset)
    actual = run_with_grads(native.native_gru_layer, inputs, reset)
    assert_all_close(actual, expected, dtype)
    if not h0_grad:
        assert inputs[1].grad is None


@pytest.mark.parametrize("reset", ["after", "before"])
@pytest.mark.parametrize("shape", [(9, 17, 3, 19), (4, 1, 2, 33), (3, 40, 8, 64)])
def test_matches_naive_at_ragged_sizes(native, device, reset, shape):
    """H not a multiple of the vector width (tails), B=1, and batches split over threads."""
    inputs = make_inputs(*shape, dtype=torch.float64, device=device)
    assert_all_close(
        run_with_grads(native.native_gru_layer, inputs, reset),
        run_with_grads(naive_gru, inputs, reset),
        torch.float64,
    )


@pytest.mark.parametrize("reset", ["after", "before"])
def test_one_bias_only(native, device, reset):
    for keep in (4, 5):  # bias_ih only, then bias_hh only
        inputs = make_inputs(4, 2, 3, 5, dtype=torch.float64, device=device)
        inputs[9 - keep] = None
        assert_all_close(
            run_with_grads(native.native_gru_layer, inputs, reset),
            run_with_grads(naive_gru, inputs, reset),
            torch.float64,
        )


@pytest.mark.parametrize("reset", ["after", "before"])
def test_single_step(native, device, reset):
    inputs = make_inputs(1, 4, 3, 5, dtype=torch.float64, device=device)
    assert_all_close(
        run_with_grads(native.native_gru_layer, inputs, reset),
        run_with_grads(naive_gru, inputs, reset),
        torch.float64,
    )


@pytest.mark.parametrize("reset", ["after", "before"])
def test_long_sequences_split_into_chunks(native, tune, reset):
    """Tiny caps force several time chunks (backward gradient buffer, no-grad gate buffer)."""
    inputs = make_inputs(11, 3, 4, 5, dtype=torch.float64)
    expected = run_with_grads(naive_gru, inputs, reset)
    row = 3 * 4 * 5 * 8  # bytes of one step of the widest [B, 4H] buffer
    assert_matches_in_chunks(native, tune, inputs, expected, reset, row, (1, 3, 4, 100))


@pytest.mark.parametrize("reset", ["after", "before"])
def test_batch_rows_split_over_threads(native, tune, threads, reset):
    """Each thread runs the time loop on its own block of rows (row_blocks): 3 threads on 7 rows
    (uneven blocks), with 1, 3 and all steps per chunk (odd and even chunk lengths)."""
    inputs = make_inputs(11, 7, 4, 5, dtype=torch.float64)
    expected = run_with_grads(naive_gru, inputs, reset)
    threads(3)
    tune("split_min_rows", 1)
    assert_matches_in_chunks(native, tune, inputs, expected, reset, 7 * 4 * 5 * 8, (1, 3, 100))


@pytest.mark.parametrize("input_size", [1, 3, 17])
@pytest.mark.parametrize("step_proj_max_input, step_proj_scratch", [(16, 1), (16, 0), (0, 1)])
@pytest.mark.parametrize("reset", ["after", "before"])
def test_input_projection_per_step_or_batched(native, tune, threads, reset, step_proj_max_input,
                                              step_proj_scratch, input_size):
    """Small inputs (I <= step_proj_max_input) get each step's input projection beside the gate
    pass (into a reused buffer, or into the workspace with step_proj_scratch=0), larger ones one
    GEMM over the chunk's steps: each equals the equations, rows split over threads or not,
    training and no-grad, in one chunk and in several."""
    inputs = make_inputs(7, 6, input_size, 5, dtype=torch.float64)
    expected = run_with_grads(naive_gru, inputs, reset)
    tune("step_proj_max_input", step_proj_max_input)
    tune("step_proj_scratch", step_proj_scratch)
    for n_threads, split_min_rows in ((1, 16), (3, 1)):
        threads(n_threads)
        tune("split_min_rows", split_min_rows)
        assert_matches_in_chunks(native, tune, inputs, expected, reset, 6 * 4 * 5 * 8, (2, 100))


def packed_count() -> int:
    """How many per-step products have packed W_hh in this process (the kernel's read-only knob)."""
    return torch.ops.grutrain_native.cpu_tune("packed_count", -1)


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("reset", ["after", "before"])
def test_packed_weights_in_forward_and_backward(native, tune, threads, reset, packed):
    """float32: the per-step products with MKL's packed W_hh (forward h W_hh^T, backward G W_hh,
    from packed_min_steps steps; the size caps lifted, MKL's copy being ~8 MB at any size) or plain
    GEMMs, rows split over threads or not, equal the equations to float32 tolerance, training and
    no-grad; packing is counted where MKL is there to do it."""
    inputs = make_inputs(17, 6, 3, 20)
    expected = run_with_grads(naive_gru, inputs, reset)
    with torch.no_grad():
        expected_out = naive_gru(*inputs, reset)
    tune("packed_min_steps", 16 if packed else 1 << 20)
    tune("packed_min_work", 0)
    tune("packed_backward", 1)
    tune("small_gemm_max_elems", 0)  # else this small W_hh's backward products take small_gemm
    tune("packed_train_percent", 1 << 20)
    tune("packed_infer_bytes", 1 << 40)
    before = packed_count()
    for n_threads, split_min_rows in ((1, 16), (2, 1)):
        threads(n_threads)
        tune("split_min_rows", split_min_rows)
        actual = run_with_grads(native.native_gru_layer, inputs, reset)
        assert_all_close(actual, expected, torch.float32)
        with torch.no_grad():
            assert_all_close(list(native.native_gru_layer(*inputs, reset=reset)), list(expected_out), torch.float32)
    # Per run: the forward's W_hh (two parts for "before") and the backward's, or nothing.
    packs = packed_count() - before
    if not packed:
        assert packs == 0
    elif torch.backends.mkl.is_available():
        per_pass = 1 if reset == "after" else 2
        assert packs == 2 * (3 * per_pass), packs


@pytest.mark.parametrize("reset", ["after", "before"])
def test_small_gemm_per_step_products(native, tune, threads, reset):
    """float32: the backward's per-step products G W_hh by the kernel's own small GEMM
    (small_gemm_max_elems, on by default for H <= 32) or by MKL give the equations' gradients: H=20
    gives a vector and a column tail, B=7 a row tail (blocks of 4), the rows split over threads or not."""
    inputs = make_inputs(9, 7, 3, 20)
    expected = run_with_grads(naive_gru, inputs, reset)
    for small_gemm_max_elems in (1 << 20, 0):
        tune("small_gemm_max_elems", small_gemm_max_elems)
        for n_threads, split_min_rows in ((1, 16), (2, 1)):
            threads(n_threads)
            tune("split_min_rows", split_min_rows)
            assert_all_close(run_with_grads(native.native_gru_layer, inputs, reset), expected, torch.float32)


@pytest.mark.parametrize("transposed", [True, False])
@pytest.mark.parametrize("reset", ["after", "before"])
def test_products_in_either_orientation(native, tune, reset, transposed):
    """The forward's per-step h W_hh^T from a contiguous copy of W_hh^T (the default) or from W_hh
    as stored, and dW_hh and dW_ih computed as their transposes h^T G and x^T G (the defaults, dW_hh
    up to H=128) or as G^T h and G^T x: each equals the equations, training and no-grad,
    accumulated over one time chunk or several (the first holding h0's step)."""
    inputs = make_inputs(11, 3, 4, 5, dtype=torch.float64)
    expected = run_with_grads(naive_gru, inputs, reset)
    tune("step_w_copy", int(transposed))
    tune("dw_transposed_max_hidden", 1 << 20 if transposed else 0)
    tune("dw_ih_transposed", int(transposed))
    assert_matches_in_chunks(native, tune, inputs, expected, reset, 3 * 4 * 5 * 8, (1, 4, 100))


def test_packing_follows_the_memory_caps(native, tune):
    """Training packs W_hh only where MKL's copy fits packed_train_percent of the saved workspace,
    the no-grad forward where it fits packed_infer_bytes, both only for products of packed_min_work
    multiply-adds or more (the defaults: a small layer packs for neither)."""
    if not torch.backends.mkl.is_available():
        pytest.skip("MKL's packed GEMM is not in this torch build")
    inputs = make_inputs(17, 6, 3, 20)
    before = packed_count()
    with torch.no_grad():
        native.native_gru_layer(*inputs, reset="after")  # 17 x 6 x 1200 multiply-adds: too few
    assert packed_count() == before
    tune("packed_min_work", 0)
    run_with_grads(native.native_gru_layer, inputs, "after")  # workspace 33 KB: no room for ~8 MB
    assert packed_count() == before
    with torch.no_grad():
        native.native_gru_layer(*inputs, reset="after")  # the default 64 MiB for inference
    assert packed_count() == before + 1
    tune("packed_infer_bytes", 1 << 20)
    with torch.no_grad():
        native.native_gru_layer(*inputs, reset="after")
    assert packed_count() == before + 1


@pytest.mark.parametrize("split_min_rows", [1, 0])
@pytest.mark.parametrize("reset", ["after", "before"])
def test_strided_output_gradients(native, tune, threads, reset, split_min_rows):
    """grad_out as autograd hands it over for common losses: out.sum()'s ones expanded over every
    dimension, a [B, H] weight broadcast over time, a [T, B] weight broadcast over H (copied
    step by step), and a batch-first model's gradient (the transpose of a [B, T, H] tensor);
    with the batch rows split over threads and not."""
    inputs = make_inputs(9, 7, 4, 5, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(7, 5, generator=g, dtype=torch.float64)
    g_bt = torch.randn(7, 9, 5, generator=g, dtype=torch.float64)
    per_step = torch.randn(9, 7, 1, generator=g, dtype=torch.float64)  # grad_out strides (7, 1, 0)
    losses = {
        "sum": lambda out: out.sum(),
        "broadcast over time": lambda out: (out * weight).sum(),
        "broadcast over H": lambda out: (out.sum(-1) * per_step[..., 0]).sum(),
        "transposed": lambda out: (out * g_bt.transpose(0, 1)).sum(),
    }
    leaves = [t for t in inputs if t is not None]
    threads(3)
    tune("split_min_rows", split_min_rows)
    for loss in losses.values():
        out_ref, h_ref = naive_gru(*inputs, reset)
        expected = torch.autograd.grad(loss(out_ref) + h_ref.sum(), leaves)
        out, h_T = native.native_gru_layer(*inputs, reset=reset)
        actual = torch.autograd.grad(loss(out) + h_T.sum(), leaves)
        assert_all_close(list(actual), list(expected), torch.float64)


@pytest.mark.parametrize("fast_math", [1, 0])
def test_gate_functions_over_the_whole_float_range(native, tune, fast_math):
    """The float32 gate pass's sigmoid and tanh (AVX512: its own exp and reciprocal; else ATen's
    exp_u20 and a division) against float64 torch, from tiny to huge pre-activations, with NaN
    kept NaN and the infinities at their limits. One step with W_hh = 0, h0 = 0 and every gate
    reading x: h = (1 - sigmoid(x)) tanh(x)."""
    tune("fast_math", fast_math)
    special = [-1e4, -200.0, -101.0, -89.0, -88.5, -80.5, 80.5, 88.5, 89.0, 101.0, 200.0, 1e4,
               float("inf"), float("-inf")]
    xs = torch.cat([torch.linspace(-30, 30, 20001), torch.tensor(special), torch.tensor([float("nan")])])
    H = 16
    w_ih, w_hh = torch.ones(3 * H, 1), torch.zeros(3 * H, H)
    with torch.no_grad():
        out, _ = native.native_gru_layer(xs.view(1, -1, 1), torch.zeros(xs.numel(), H), w_ih, w_hh, None, None,
                                         reset="after")
    got = out[0].double()
    x64 = xs.double()[:-1, None].expand(-1, H)
    want = (1 - torch.sigmoid(x64)) * torch.tanh(x64)
    torch.testing.assert_close(got[:-1], want, atol=1e-6, rtol=0)
    assert got[-1].isnan().all()


def test_matches_torch_nn_gru(native, device):
    torch.manual_seed(0)
    T, B, I, H = 7, 4, 5, 6
    ref = torch.nn.GRU(I, H).to(device)
    x = torch.randn(T, B, I, device=device, requires_grad=True)
    h0 = torch.randn(1, B, H, device=device, requires_grad=True)
    weights = [torch.nn.Parameter(p.detach().clone()) for p in ref.parameters()]  # ih, hh, b_ih, b_hh

    out_ref, hn_ref = ref(x, h0)
    out, h_T = native.native_gru_layer(x, h0[0], *weights, reset="after")
    torch.testing.assert_close(out, out_ref, **TOL[torch.float32])
    torch.testing.assert_close(h_T, hn_ref[0], **TOL[torch.float32])

    go, gh = torch.randn_like(out), torch.randn_like(h_T)
    expected = torch.autograd.grad((out_ref * go).sum() + (hn_ref[0] * gh).sum(), [x, h0, *ref.parameters()])
    actual = torch.autograd.grad((out * go).sum() + (h_T * gh).sum(), [x, h0, *weights])
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e.reshape(a.shape), **TOL[torch.float32])


def test_matches_torch_nn_gru_at_a_standard_shape(native, tune):
    """(35, 32, 28, 256): the MKL packed per-step product and the threaded gate passes in use."""
    torch.manual_seed(0)
    ref = torch.nn.GRU(28, 256)
    x = torch.randn(35, 32, 28)
    weights = [p.detach().clone().requires_grad_() for p in ref.parameters()]
    out_ref, hn_ref = ref(x)
    out, h_T = native.native_gru_layer(x, None, *weights)
    torch.testing.assert_close(out, out_ref, atol=2e-5, rtol=1e-4)
    go = torch.randn_like(out)
    expected = torch.autograd.grad((out_ref * go).sum(), list(ref.parameters()))
    actual = torch.autograd.grad((out * go).sum(), weights)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, atol=1e-4, rtol=1e-4)


# Every tuning knob that picks a code path (not only a size), with the values that switch it.
RANDOM_KNOBS = {
    "split_min_rows": [1, 16], "split_max_hidden": [0, 4096], "step_w_copy": [0, 1],
    "dw_transposed_max_hidden": [0, 4096], "dw_ih_transposed": [0, 1], "step_proj_max_input": [0, 64],
    "step_proj_scratch": [0, 1], "chunk_bytes": [1, 4096], "infer_chunk_bytes": [1, 1 << 20],
    "packed_min_work": [0, 1 << 24], "packed_min_steps": [1, 16], "small_gemm_max_elems": [0, 3072],
    "grain_elems": [1, 4096], "fast_math": [0, 1],
}


@pytest.mark.parametrize("seed", range(24))
def test_random_configurations_match_the_references(native, tune, threads, seed):
    """The module on the native path against torch.nn.GRU ("after") or the reference equations
    ("before"), in configurations drawn at random: layers, directions, batch_first, bias, a
    non-contiguous input, h0, packed sequences, float32/float64, 1 or 2 threads, and a random subset
    of the knobs (their combinations are where a path's assumptions about another would show)."""
    rnd = random.Random(seed)
    torch.manual_seed(seed)
    for name, values in RANDOM_KNOBS.items():
        if rnd.random() < 0.4:
            tune(name, rnd.choice(values))
    threads(rnd.choice([1, 2]))
    T, B, I = rnd.choice([1, 3, 16, 33]), rnd.choice([1, 5, 17, 33]), rnd.choice([1, 3, 17, 40])
    H, layers = rnd.choice([1, 5, 16, 17, 64, 100]), rnd.choice([1, 2, 3])
    bidirectional, bias, batch_first = rnd.random() < 0.4, rnd.random() < 0.8, rnd.random() < 0.4
    reset, dtype = rnd.choice(["after", "before"]), rnd.choice([torch.float32, torch.float64])
    kwargs = dict(num_layers=layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional, dtype=dtype)
    model = GRU(I, H, reset=reset, impl="native", **kwargs)
    ref = torch.nn.GRU(I, H, **kwargs) if reset == "after" else GRU(I, H, reset=reset, impl="reference", **kwargs)
    ref.load_state_dict(model.state_dict())

    shape = (B, T, I) if batch_first else (T, B, I)
    x = torch.randn(shape[::-1], dtype=dtype).permute(2, 1, 0) if rnd.random() < 0.3 else torch.randn(shape, dtype=dtype)
    h0 = torch.randn(layers * (2 if bidirectional else 1), B, H, dtype=dtype) if rnd.random() < 0.5 else None
    lengths = sorted((rnd.randint(1, T) for _ in range(B)), reverse=True) if rnd.random() < 0.3 else None
    weights = torch.randn(*shape[:2], H * (2 if bidirectional else 1), dtype=dtype)

    results = []
    for m in (model, ref):
        xs = x.detach().clone().requires_grad_()
        hs = h0.detach().clone().requires_grad_() if h0 is not None else None
        if lengths is not None:
            out, h_n = m(pack_padded_sequence(xs, torch.tensor(lengths), batch_first=batch_first), hs)
            out = pad_packed_sequence(out, batch_first=batch_first, total_length=T)[0]
        else:
            out, h_n = m(xs, hs)
        loss = (out * weights).sum() + h_n.pow(2).sum()
        grads = torch.autograd.grad(loss, [xs] + ([hs] if hs is not None else []) + list(m.parameters()))
        results.append([out, h_n, *grads])
    tol = TOL[dtype] if dtype == torch.float64 else dict(atol=1e-4, rtol=1e-4)
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected, **tol)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("reset", ["after", "before"])
def test_gradcheck_float64(native, device, reset, bias):
    inputs = tuple(make_inputs(4, 2, 3, 4, dtype=torch.float64, bias=bias, device=device))
    assert torch.autograd.gradcheck(lambda *a: native.native_gru_layer(*a, reset=reset), inputs)


@pytest.mark.parametrize("reset", ["after", "before"])
def test_gradgradcheck_double_backward(native, device, reset):
    """create_graph=True: the reference equations are recomputed, as in the fused path."""
    inputs = tuple(make_inputs(3, 2, 2, 3, dtype=torch.float64, device=device))
    assert torch.autograd.gradgradcheck(lambda *a: native.native_gru_layer(*a, reset=reset), inputs)


@pytest.mark.parametrize("reset", ["after", "before"])
def test_gradient_penalty_matches_reference(native, device, reset):
    inputs = make_inputs(5, 2, 3, 4, dtype=torch.float64, device=device)
    results = []
    for fn in (native.native_gru_layer, naive_gru):
        out, h_T = fn(*inputs, reset=reset)
        (dx,) = torch.autograd.grad(out.pow(2).sum() + h_T.sum(), inputs[0], create_graph=True)
        results.append(torch.autograd.grad(dx.pow(2).sum() + out.sum(), [t for t in inputs if t is not None]))
    assert_all_close(results[0], results[1], torch.float64)


# --------------------------------------------------------------------------- bfloat16 (mixed precision)


@pytest.mark.parametrize("reset", ["after", "before"])
def test_bf16_autocast_cpu_close_to_float32(native, reset):
    inputs = make_inputs(8, 4, 6, 16)
    expected = run_with_grads(native.native_gru_layer, inputs, reset)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_bf16 = inputs[0].detach().to(torch.bfloat16).requires_grad_()
        out, h_T = native.native_gru_layer(x_bf16, *inputs[1:], reset=reset)
        torch_out, torch_h = torch.nn.GRU(6, 16)(x_bf16)
    # The output dtype is torch.nn.GRU's under the same autocast (bf16 in, bf16 out on CPU).
    assert out.dtype == torch_out.dtype == torch.bfloat16 and h_T.dtype == torch_h.dtype
    g = torch.Generator().manual_seed(1)
    loss = (out * torch.randn(out.shape, generator=g)).sum() + (h_T * torch.randn(h_T.shape, generator=g)).sum()
    grads = torch.autograd.grad(loss, [x_bf16, *inputs[1:]])
    assert grads[0].dtype == torch.bfloat16  # flows back through the cast to the bf16 input
    for a, e in zip([out, h_T, *grads], expected):
        torch.testing.assert_close(a.float(), e, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("hidden", [256, 32])
@pytest.mark.parametrize("reset", ["after", "before"])
def test_bf16_products_stay_close_to_float32(native, tune, reset, hidden):
    """test_gru_bf16's tolerance: 3e-2 of each tensor's largest entry. hidden=32 is forced onto the
    bfloat16 route too (below the size where it is chosen by default)."""
    tune("lowp_min_hidden", 1)
    tune("lowp_min_input", 1)
    inputs = make_inputs(12, 8, 256, hidden)
    expected = run_with_grads(native.native_gru_layer, inputs, reset)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        actual = run_with_grads(native.native_gru_layer, inputs, reset)
    assert [a.dtype for a in actual] == [torch.float32] * len(expected)
    rel = []
    for i, (a, e) in enumerate(zip(actual, expected)):
        scale = float(e.detach().abs().max())
        torch.testing.assert_close(a, e, atol=3e-2 * scale, rtol=0, msg=lambda m: f"tensor {i}: {m}")
        rel.append(float((a - e).detach().abs().max()) / scale)
    assert max(rel) > 1e-4  # the bfloat16 route was really taken (float32 agrees to ~1e-6)


# cpu_tune("bf16_gemm") of each bf16 GEMM path: 0 auto (MKL on Intel CPUs), 1 oneDNN (at::mm,
# bf16 products), 2 MKL's cblas_gemm_bf16bf16f32 (float products) where torch has it.
BF16_GEMMS = {"onednn": 1, "mkl": 2}


def bf16_vendor_is_intel():
    with open("/proc/cpuinfo") as f:
        return "GenuineIntel" in f.read()


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("path", sorted(BF16_GEMMS))
@pytest.mark.parametrize("reset", ["after", "before"])
def test_bf16_route_on_each_gemm_path(native, tune, threads, reset, path, split):
    """Each GEMM path of the bfloat16 route stays within test_gru_bf16's tolerance of float32, in
    training and no-grad alike, over several time chunks; split: 3 threads run the time loop on
    uneven blocks of 7 rows (where the path allows it: MKL)."""
    T, B, I, H = 12, 7, 64, 64
    inputs = make_inputs(T, B, I, H)
    expected = run_with_grads(native.native_gru_layer, inputs, reset)
    tune("bf16_gemm", BF16_GEMMS[path])
    tune("chunk_bytes", 5 * B * 4 * H * 4)
    tune("infer_chunk_bytes", 5 * B * 4 * H * 4)
    tune("split_min_rows", 1 if split else 0)
    if split:
        threads(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        actual = run_with_grads(native.native_gru_layer, inputs, reset)
        with torch.no_grad():
            out, h_T = native.native_gru_layer(*inputs, reset=reset)
    torch.testing.assert_close(out, actual[0].detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h_T, actual[1].detach(), atol=1e-5, rtol=1e-5)
    rel = []
    for i, (a, e) in enumerate(zip(actual, expected)):
        scale = float(e.detach().abs().max())
        torch.testing.assert_close(a, e, atol=3e-2 * scale, rtol=0, msg=lambda m, i=i: f"tensor {i}: {m}")
        rel.append(float((a - e).detach().abs().max()) / scale)
    assert max(rel) > 1e-4  # the bfloat16 route was really taken


def test_bf16_gemm_knob_chooses_the_path(native, tune):
    """bf16_gemm=2 takes MKL where torch has it (its float products differ from oneDNN's rounded
    bf16 ones); auto (0) is MKL on GenuineIntel CPUs only, oneDNN elsewhere."""
    inputs = [t.detach() for t in make_inputs(6, 4, 64, 64)]

    def forward(knob):
        tune("bf16_gemm", knob)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return native.native_gru_layer(*inputs)[0]

    onednn, mkl, auto = forward(1), forward(2), forward(0)
    has_mkl = torch.backends.mkl.is_available()
    assert torch.equal(onednn, mkl) != has_mkl
    assert torch.equal(auto, mkl if has_mkl and bf16_vendor_is_intel() else onednn)


def test_bf16_keeps_float32_state(native):
    """The float32 state is why the route exists: closer to float32 than an all-bf16 nn.GRU."""
    torch.manual_seed(0)
    gru = torch.nn.GRU(256, 256)
    x = torch.randn(64, 8, 256)
    params = [gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0]
    with torch.no_grad():
        expected, _ = gru(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed, _ = native.native_gru_layer(x, None, *params)
        all_bf16, _ = gru.to(torch.bfloat16)(x.to(torch.bfloat16))
    mixed_error = (mixed - expected).abs().max()
    assert 0 < mixed_error < (all_bf16.float() - expected).abs().max() / 2


def bf16_layer_op(inputs, reset):
    """The training op itself on the bfloat16 route: (out, h_n, workspace)."""
    x, h0, w_ih, w_hh, b_ih, b_hh = (t.detach() for t in inputs)
    return torch.ops.grutrain_native.gru_layer(x, h0, w_ih, w_hh, b_ih, b_hh, reset, torch.bfloat16)


@pytest.mark.parametrize("reset", ["after", "before"])
def test_bf16_route_keeps_its_gates_in_bf16(native, tune, reset):
    """What the training forward keeps for backward is bfloat16 on the bfloat16 route (half the
    bytes): the same gate values as a float32 workspace, rounded to nearest even as torch rounds;
    the output is computed in float32 either way."""
    inputs = make_inputs(6, 4, 64, 64)
    width = 4 * 64 if reset == "after" else 3 * 64
    out, h_n, ws = bf16_layer_op(inputs, reset)
    assert ws.dtype == torch.bfloat16 and ws.shape == (6, 4, width)
    assert out.dtype == h_n.dtype == torch.float32
    tune("lowp_workspace", 0)
    out32, _, ws32 = bf16_layer_op(inputs, reset)
    assert ws32.dtype == torch.float32
    torch.testing.assert_close(out, out32, atol=1e-6, rtol=1e-6)
    assert torch.equal(ws, ws32.to(torch.bfloat16))


@pytest.mark.parametrize("reset", ["after", "before"])
def test_bf16_workspace_changes_only_what_backward_reads(native, tune, reset):
    """A float32 workspace on the same route (lowp_workspace=0) gives the same forward; the
    gradients differ only by the gates' bfloat16 rounding (test_gru_bf16's tolerance)."""
    inputs = make_inputs(12, 8, 256, 256)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = run_with_grads(native.native_gru_layer, inputs, reset)
        tune("lowp_workspace", 0)
        full = run_with_grads(native.native_gru_layer, inputs, reset)
    for a, e in zip(low[:2], full[:2]):
        torch.testing.assert_close(a, e, atol=1e-6, rtol=1e-6)
    for i, (a, e) in enumerate(zip(low[2:], full[2:])):
        scale = float(e.abs().max())
        torch.testing.assert_close(a, e, atol=3e-2 * scale, rtol=0, msg=lambda m, i=i: f"gradient {i}: {m}")


@pytest.mark.parametrize("input_size", [64, 28])  # bf16 / float32 input projection
@pytest.mark.parametrize("reset", ["after", "before"])
def test_bf16_route_in_time_chunks(native, tune, reset, input_size):
    """Tiny caps split the bfloat16 route's input projections (training forward) and gradient
    buffer (backward) into chunks of 1, 3 and 5 steps: the forward equals the unsplit one and
    every result stays within test_gru_bf16's tolerance of float32."""
    T, B, I, H = 11, 3, input_size, 64
    inputs = make_inputs(T, B, I, H)
    expected = run_with_grads(native.native_gru_layer, inputs, reset)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        whole = run_with_grads(native.native_gru_layer, inputs, reset)
    width = 4 * H if reset == "after" else 3 * H
    for steps in (1, 3, 5):
        tune("proj_chunk_bytes", steps * B * 3 * H * 4)
        tune("chunk_bytes", steps * B * width * 4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            actual = run_with_grads(native.native_gru_layer, inputs, reset)
        for a, e in zip(actual[:2], whole[:2]):
            torch.testing.assert_close(a, e, atol=1e-6, rtol=1e-6)
        for i, (a, e) in enumerate(zip(actual, expected)):
            scale = float(e.detach().abs().max())
            torch.testing.assert_close(a, e, atol=3e-2 * scale, rtol=0, msg=lambda m, i=i: f"tensor {i}: {m}")


def test_bf16_training_peak_memory_at_most_torch_grus(native):
    """Issue 20's memory target at the first standard shape, where the float32 workspace made it
    1.24x: a bf16 training step (autocast) holds at most what torch.nn.GRU's holds under the same
    autocast. Allocations counted by the profiler, as `grutrain bench` does (no timing)."""
    from grutrain.commands.bench_layers import _OneLayer, _peak_memory_bytes, _Timed

    T, B, I, H = 35, 32, 28, 256
    torch.manual_seed(0)
    gru = torch.nn.GRU(I, H)  # built here, not by the bench: autocast runs on any CPU, if slowly
    models = {"torch": _Timed(gru, torch.bfloat16),
              "native": _Timed(_OneLayer(native.native_gru_layer, gru), torch.bfloat16)}
    x = torch.randn(T, B, I)
    peaks = {name: _peak_memory_bytes(model, x) for name, model in models.items()}
    assert 0 < peaks["native"] <= peaks["torch"], peaks


@pytest.mark.parametrize("precision", [None, torch.bfloat16])
@pytest.mark.parametrize("reset", ["after", "before"])
def test_no_grad_path_matches_training_path(native, tune, reset, precision):
    tune("infer_chunk_bytes", 8 * 4 * 256 * 4 * 5)  # several chunks of the no-grad gate buffer
    inputs = make_inputs(12, 8, 256, 256)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision is not None):
        out_train, h_train = native.native_gru_layer(*inputs, reset=reset)
        with torch.no_grad():
            out, h_T = native.native_gru_layer(*inputs, reset=reset)
    assert out_train.grad_fn is not None and out.grad_fn is None
    torch.testing.assert_close(out, out_train.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h_T, h_train.detach(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("reset", ["after", "before"])
def test_aten_fallback_gemms_match(native, tune, reset):
    """The at::mm fallback (builds without MKL's symbols) gives the same results, bf16 too."""
    inputs = make_inputs(5, 3, 64, 64)
    expected = run_with_grads(native.native_gru_layer, inputs, reset)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected_bf16 = run_with_grads(native.native_gru_layer, inputs, reset)
    tune("use_blas", 0)
    assert_all_close(run_with_grads(native.native_gru_layer, inputs, reset), expected, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        actual_bf16 = run_with_grads(native.native_gru_layer, inputs, reset)
    for a, e in zip(actual_bf16, expected_bf16):  # bf16 rounding of the products differs
        torch.testing.assert_close(a, e, atol=3e-2 * float(e.detach().abs().max()), rtol=0)


# --------------------------------------------------------------------------- interface details


def test_no_grad_forward_builds_no_graph_and_matches(native):
    inputs = make_inputs(5, 3, 4, 6)
    out_grad, h_grad = native.native_gru_layer(*inputs)
    with torch.no_grad():
        out, h_T = native.native_gru_layer(*inputs)
    assert out.grad_fn is None and h_T.grad_fn is None
    torch.testing.assert_close(out, out_grad.detach(), atol=0, rtol=0)
    torch.testing.assert_close(h_T, h_grad.detach(), atol=0, rtol=0)
    assert out.shape == (5, 3, 6) and out.is_contiguous()


def test_only_requested_gradients_are_computed(native):
    x, h0, w_ih, w_hh, b_ih, b_hh = make_inputs(5, 3, 4, 6, dtype=torch.float64, h0_grad=False, x_grad=False)
    w_ih.requires_grad_(False)  # a frozen input projection
    out, h_T = native.native_gru_layer(x, h0, w_ih, w_hh, b_ih, b_hh)
    (out.sum() + h_T.sum()).backward()
    assert x.grad is None and h0.grad is None and w_ih.grad is None
    ref = [t.detach().clone().requires_grad_(t.requires_grad) for t in (x, h0, w_ih, w_hh, b_ih, b_hh)]
    out_ref, h_ref = naive_gru(*ref, "after")
    (out_ref.sum() + h_ref.sum()).backward()
    for mine, theirs in zip((w_hh, b_ih, b_hh), ref[3:]):
        torch.testing.assert_close(mine.grad, theirs.grad, **TOL[torch.float64])


def test_only_one_output_used(native):
    inputs = make_inputs(4, 2, 3, 5, dtype=torch.float64)
    for pick in (0, 1):
        got = torch.autograd.grad(native.native_gru_layer(*inputs)[pick].sum(), inputs[2])
        want = torch.autograd.grad(naive_gru(*inputs, "after")[pick].sum(), inputs[2])
        torch.testing.assert_close(got, want, **TOL[torch.float64])


def test_non_contiguous_input_and_default_h0(native):
    x, _, w_ih, w_hh, b_ih, b_hh = make_inputs(5, 3, 4, 6, dtype=torch.float64)
    x_bt = x.detach().transpose(0, 1).contiguous().requires_grad_()  # [B, T, I]
    out, h_T = native.native_gru_layer(x_bt.transpose(0, 1), None, w_ih, w_hh, b_ih, b_hh)
    out_ref, h_ref = naive_gru(x, torch.zeros(3, 6, dtype=torch.float64), w_ih, w_hh, b_ih, b_hh, "after")
    torch.testing.assert_close(out, out_ref, **TOL[torch.float64])
    torch.testing.assert_close(h_T, h_ref, **TOL[torch.float64])
    (g,) = torch.autograd.grad(out.sum(), x_bt)
    (g_ref,) = torch.autograd.grad(out_ref.sum(), x)
    torch.testing.assert_close(g, g_ref.transpose(0, 1), **TOL[torch.float64])


def test_in_place_change_of_output_is_caught(native):
    out, _ = native.native_gru_layer(*make_inputs(3, 2, 3, 4))
    out.add_(1)  # allowed like on any tensor, but the backward needs the unmodified states
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_retain_graph_backward_twice(native):
    inputs = make_inputs(4, 2, 3, 5, dtype=torch.float64)
    out, h_T = native.native_gru_layer(*inputs)
    first = torch.autograd.grad(out.sum(), inputs[3], retain_graph=True)
    second = torch.autograd.grad(out.sum(), inputs[3])
    torch.testing.assert_close(first, second, atol=0, rtol=0)


def test_rejects_bad_arguments(native):
    with pytest.raises(ValueError, match="reset"):
        native.native_gru_layer(*make_inputs(2, 1, 2, 3), reset="middle")
    with pytest.raises(ValueError, match="T, B, I"):
        native.native_gru_layer(torch.randn(2, 3), *make_inputs(2, 1, 2, 3)[1:])
    x, h0, w_ih, w_hh, b_ih, b_hh = make_inputs(2, 1, 2, 3)
    with pytest.raises(RuntimeError, match="w_ih"):
        native.native_gru_layer(x, h0, w_ih[:, :1], w_hh, b_ih, b_hh)


def test_the_op_is_registered_per_dispatch_key(native):
    name = f"{native.LIBRARY}::gru_layer"
    assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CPU")
    # Autograd sits behind the Autograd alias key, device independent: a CUDA kernel gets it too.
    assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "Autograd")
    assert native.supports(torch.zeros(1))
    assert not native.supports(torch.zeros(1, dtype=torch.float16))


# --------------------------------------------------------------------------- the cell (generation)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("reset", ["after", "before"])
def test_cell_equals_one_step_of_the_layer(native, device, reset, bias, batch, dtype):
    x, h0, w_ih, w_hh, b_ih, b_hh = make_inputs(1, batch, 5, 7, dtype=dtype, bias=bias, device=device)
    with torch.no_grad():
        out, h_T = native.native_gru_layer(x, h0, w_ih, w_hh, b_ih, b_hh, reset=reset)
        h1 = native.native_gru_cell(x[0], h0, w_ih, w_hh, b_ih, b_hh, reset=reset)
        _, h_ref = naive_gru(x, h0, w_ih, w_hh, b_ih, b_hh, reset)
    # The same pass and products (MKL may round a product differently by one ulp by alignment).
    tight = dict(atol=1e-6, rtol=1e-6) if dtype == torch.float32 else dict(atol=1e-14, rtol=1e-14)
    torch.testing.assert_close(h1, h_T, **tight)
    torch.testing.assert_close(h1, h_ref, **TOL[dtype])


def test_cell_steps_follow_torch_gru(native):
    torch.manual_seed(0)
    gru = torch.nn.GRU(16, 256)
    w = [gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0]
    xs = torch.randn(20, 1, 16)
    with torch.no_grad():
        expected, _ = gru(xs)
        h = torch.zeros(1, 256)
        for t in range(20):
            h = native.native_gru_cell(xs[t], h, *w)
            torch.testing.assert_close(h, expected[t], atol=1e-5, rtol=1e-5)


def test_cell_refuses_grad(native):
    x, h0, w_ih, w_hh, b_ih, b_hh = make_inputs(1, 2, 3, 4)
    with pytest.raises(RuntimeError, match="no_grad"):
        native.native_gru_cell(x[0], h0, w_ih, w_hh, b_ih, b_hh)


def _stack_reference(ids, h, layers, table, head_w, head_b, reset):
    """The stack step by the naive equations: embedding rows, each layer's step, the head."""
    x, states = table[ids], []
    for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(layers):
        _, x = naive_gru(x[None], h[layer], w_ih, w_hh, b_ih, b_hh, reset)
        states.append(x)
    return x @ head_w.T + head_b, torch.stack(states)


# batch 5: past the hand-written small-batch products (the GEMM); H=37, E=9: ragged vector tails
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [1, 3, 5])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("reset", ["after", "before"])
def test_stack_step_matches_naive_equations(native, reset, layers, batch, dtype):
    g = torch.Generator().manual_seed(layers * 10 + batch)
    H, E, V = 37, 9, 11

    def u(*shape):
        return (torch.rand(*shape, generator=g, dtype=dtype) * 2 - 1) * H**-0.5

    weights = [[u(3 * H, E if layer == 0 else H), u(3 * H, H), u(3 * H), u(3 * H)] for layer in range(layers)]
    table, head_w, head_b = u(V, E) * 10, u(V, H), u(V)
    ids = torch.randint(V, (batch,), generator=g)
    h = torch.randn(layers, batch, H, generator=g, dtype=dtype) * 0.5
    with torch.no_grad():
        logits, h_n = native.native_stack_step(ids, h, sum(weights, []), table, head_w, head_b, reset)
        want_logits, want_h = _stack_reference(ids, h, weights, table, head_w, head_b, reset)
    torch.testing.assert_close(logits, want_logits, **TOL[dtype])
    torch.testing.assert_close(h_n, want_h, **TOL[dtype])


@pytest.mark.parametrize("reset", ["after", "before"])
def test_stack_step_without_bias_or_head_on_features_equals_the_cell(native, reset):
    x, h0, w_ih, w_hh, _, _ = make_inputs(1, 2, 5, 300, bias=False)  # 3H*H: the parallel products
    with torch.no_grad():
        out, h_n = native.native_stack_step(x[0], h0[None], [w_ih, w_hh, None, None], reset=reset)
        _, want = naive_gru(x, h0, w_ih, w_hh, None, None, reset)
    torch.testing.assert_close(out, want, **TOL[torch.float32])
    torch.testing.assert_close(h_n, want[None], **TOL[torch.float32])


def test_stack_step_rejects_an_out_of_range_token(native):
    x, h0, w_ih, w_hh, b_ih, b_hh = make_inputs(1, 1, 3, 4, x_grad=False, h0_grad=False)
    with torch.no_grad(), pytest.raises(RuntimeError, match="out of range"):
        native.native_stack_step(torch.tensor([7]), h0[None], [w_ih, w_hh, b_ih, b_hh], torch.zeros(5, 3))


# --------------------------------------------------------------------------- the loader


def _python(code: str, env_extra: dict) -> subprocess.Popen:
    hidden = ("GRUTRAIN_KERNEL_DIR", "GRUTRAIN_CACHE_DIR", "GRUTRAIN_NATIVE", "CXX", "ATEN_CPU_CAPABILITY")
    env = {k: v for k, v in os.environ.items() if k not in hidden}
    env.update(env_extra, MAX_JOBS="1")
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


# Trains a few steps on whatever path is available: the native kernel, else the Python fused path.
_TRAIN = """
    import torch
    from grutrain.gru import native
    from grutrain.gru.fused import fused_gru_layer
    ok = native.load()
    print("AVAILABLE", ok)
    print("AGAIN", native.load())  # no second notice
    layer = native.native_gru_layer if ok else fused_gru_layer
    torch.manual_seed(0)
    params = [torch.randn(12, 3, requires_grad=True), torch.randn(12, 4, requires_grad=True)]
    opt = torch.optim.SGD(params, lr=0.1)
    x = torch.randn(5, 2, 3)
    losses = []
    for _ in range(3):
        out, h = layer(x, torch.zeros(2, 4), *params, None, None, reset="after")
        loss = out.pow(2).mean()
        opt.zero_grad(); loss.backward(); opt.step()
        losses.append(loss.item())
    print("TRAINED", losses[-1] < losses[0])
    print("STATUS", native.status()["reason"])
"""


def _notice_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("grutrain:")]


def test_fallback_without_compiler(tmp_path):
    proc = _python(_TRAIN, {"GRUTRAIN_KERNEL_DIR": str(tmp_path), "CXX": "/nonexistent/g++"})
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "AVAILABLE False" in stdout and "AGAIN False" in stdout and "TRAINED True" in stdout
    lines = _notice_lines(stderr)
    assert lines == [
        "grutrain: native GRU kernel unavailable (no C++ compiler found: /nonexistent/g++; install g++ or "
        "set CXX); using the Python fused path"
    ], stderr
    assert "no C++ compiler" in stdout


@pytest.mark.skipif(not os.path.exists("/bin/false"), reason="needs /bin/false as a failing compiler")
def test_fallback_when_the_build_fails(tmp_path):
    """A compiler that fails: one line (the building notice ends in the failure), a log, and a
    FAILED mark so the next process does not try again."""
    for attempt in range(2):
        proc = _python(_TRAIN, {"GRUTRAIN_KERNEL_DIR": str(tmp_path), "CXX": "/bin/false"})
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        assert "AVAILABLE False" in stdout and "TRAINED True" in stdout
        lines = _notice_lines(stderr)
        assert len(lines) == 1 and "unavailable" in lines[0] and "using the Python fused path" in lines[0], stderr
        if attempt == 0:
            assert "building the native GRU kernel" in lines[0] and "build failed" in lines[0]
        else:
            assert "building" not in lines[0] and "an earlier build failed" in lines[0]
    (kernel_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert (kernel_dir / "build.log").exists() and (kernel_dir / "FAILED.json").exists()


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 instruction sets")
def test_fallback_when_the_cpu_lacks_avx2(tmp_path):
    proc = _python(_TRAIN, {"GRUTRAIN_KERNEL_DIR": str(tmp_path), "ATEN_CPU_CAPABILITY": "default"})
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "AVAILABLE False" in stdout and "TRAINED True" in stdout
    lines = _notice_lines(stderr)
    assert len(lines) == 1 and "lacks AVX2" in lines[0], stderr


def test_status_reports_the_build(native):
    s = native.status()
    assert s["loaded"] and s["built"] and s["reason"] is None
    assert s["path"] == os.path.join(s["kernels_dir"], s["key"])
    assert os.path.exists(os.path.join(s["path"], "grutrain_native.so"))


# The compiler's work replaced by a copy of this session's build (after a second's pause, so the
# processes overlap): what is under test is the lock and the re-check after it, not g++.
_FAKE_COMPILER = """
    import os, shutil, time
    import torch
    from torch.utils import cpp_extension

    def fake_load(name, sources, build_directory, **kwargs):  # as load(is_python_module=False): build, load
        time.sleep(1.0)
        shutil.copy({built!r}, build_directory)
        torch.ops.load_library(os.path.join(build_directory, os.path.basename({built!r})))

    cpp_extension.load = fake_load
    cpp_extension.is_ninja_available = lambda: True
"""


def test_concurrent_first_use_builds_once(native, tmp_path):
    """Three processes start together on an empty kernel directory: one builds, the others wait
    for its lock and load what it built."""
    built = os.path.join(native.status()["path"], native.LIBRARY + ".so")
    code = textwrap.dedent(_FAKE_COMPILER.format(built=built)) + textwrap.dedent(_TRAIN)
    procs = [_python(code, {"GRUTRAIN_KERNEL_DIR": str(tmp_path)}) for _ in range(3)]
    results = [p.communicate(timeout=300) for p in procs]
    building = 0
    for proc, (stdout, stderr) in zip(procs, results):
        assert proc.returncode == 0, stderr
        assert "AVAILABLE True" in stdout and "TRAINED True" in stdout, stdout + stderr
        lines = _notice_lines(stderr)
        building += sum("building the native GRU kernel" in line for line in lines)
        assert all("built in" in line for line in lines), stderr
    assert building == 1
    assert len([k for k in os.listdir(tmp_path) if not k.endswith(".lock")]) == 1
