"""The custom GRU against independent references: torch.nn.GRU (reset="after") and a naive
step-by-step transcription of the equations written here (reset="before")."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call

from grutrain.gru.layer import GRU, reference_gru_layer
from grutrain.gru.paths import IMPLS, layer_function  # every registered implementation
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def assert_close(actual, expected, dtype, what=""):
    torch.testing.assert_close(actual, expected, atol=TOL[dtype], rtol=0, msg=lambda m: f"{what}: {m}")


def run_and_backward(module, x, h0, out_weight, h_weight):
    """Forward, then backward of a random-weighted sum of output and h_n; returns all gradients."""
    x = x.detach().clone().requires_grad_(True)
    h0 = None if h0 is None else h0.detach().clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    output, h_n = module(x, h0)
    ((output * out_weight).sum() + (h_n * h_weight).sum()).backward()
    grads = {name: p.grad for name, p in module.named_parameters()}
    grads["input"] = x.grad
    if h0 is not None:
        grads["h0"] = h0.grad
    return output, h_n, grads


def check_parity(custom, reference, x, h0, dtype):
    """Same output, h_n and gradients (every parameter, input, h0) from the two modules."""
    output, h_n = reference(x, h0)
    out_weight = torch.randn_like(output)
    h_weight = torch.randn_like(h_n)
    out_c, hn_c, grads_c = run_and_backward(custom, x, h0, out_weight, h_weight)
    out_r, hn_r, grads_r = run_and_backward(reference, x, h0, out_weight, h_weight)
    assert out_c.shape == out_r.shape and hn_c.shape == hn_r.shape
    assert_close(out_c, out_r, dtype, "output")
    assert_close(hn_c, hn_r, dtype, "h_n")
    assert grads_c.keys() == grads_r.keys()
    for name in grads_r:
        assert grads_c[name] is not None, name
        assert_close(grads_c[name], grads_r[name], dtype, f"grad of {name}")


def make_pair(impl, dtype, copy="torch->custom", **kwargs):
    """A custom GRU and a torch.nn.GRU with the same weights, copied in the direction `copy`."""
    reset = kwargs.pop("reset", "after")
    torch_gru = nn.GRU(**kwargs).to(dtype)
    custom = GRU(**kwargs, reset=reset, impl=impl).to(dtype)
    if copy == "torch->custom":
        custom.load_state_dict(torch_gru.state_dict(), strict=True)
    else:
        torch_gru.load_state_dict(custom.state_dict(), strict=True)
    return custom, torch_gru


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("with_h0", [False, True], ids=["no_h0", "h0"])
@pytest.mark.parametrize("copy", ["torch->custom", "custom->torch"])
def test_matches_torch_gru(impl, dtype, num_layers, bidirectional, with_h0, copy):
    torch.manual_seed(num_layers * 10 + bidirectional * 2 + with_h0)
    T, B, I, H = 6, 3, 4, 5
    D = 2 if bidirectional else 1
    custom, torch_gru = make_pair(
        impl, dtype, copy, input_size=I, hidden_size=H, num_layers=num_layers, bidirectional=bidirectional
    )
    x = torch.randn(T, B, I, dtype=dtype)
    h0 = torch.randn(num_layers * D, B, H, dtype=dtype) if with_h0 else None
    check_parity(custom, torch_gru, x, h0, dtype)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("with_h0", [False, True], ids=["no_h0", "h0"])
def test_batch_first_matches_torch_gru(impl, bidirectional, with_h0):
    torch.manual_seed(1)
    T, B, I, H, L = 5, 3, 4, 4, 2
    D = 2 if bidirectional else 1
    custom, torch_gru = make_pair(
        impl, torch.float64, input_size=I, hidden_size=H, num_layers=L,
        bidirectional=bidirectional, batch_first=True,
    )
    # T != B, so treating the batch-first input as time-major would change the output shape.
    x = torch.randn(B, T, I, dtype=torch.float64)
    h0 = torch.randn(L * D, B, H, dtype=torch.float64) if with_h0 else None
    assert custom(x, h0)[0].shape == (B, T, D * H)
    check_parity(custom, torch_gru, x, h0, torch.float64)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("with_h0", [False, True], ids=["no_h0", "h0"])
def test_unbatched_matches_torch_gru(impl, batch_first, bidirectional, with_h0):
    torch.manual_seed(2)
    T, I, H, L = 7, 3, 4, 2
    D = 2 if bidirectional else 1
    custom, torch_gru = make_pair(
        impl, torch.float64, input_size=I, hidden_size=H, num_layers=L,
        bidirectional=bidirectional, batch_first=batch_first,
    )
    x = torch.randn(T, I, dtype=torch.float64)
    h0 = torch.randn(L * D, H, dtype=torch.float64) if with_h0 else None
    output, h_n = custom(x, h0)
    assert output.shape == (T, D * H) and h_n.shape == (L * D, H)
    check_parity(custom, torch_gru, x, h0, torch.float64)


@pytest.mark.parametrize("impl", IMPLS)
def test_without_bias_matches_torch_gru(impl):
    torch.manual_seed(3)
    custom, torch_gru = make_pair(impl, torch.float64, input_size=3, hidden_size=4, num_layers=2, bias=False,
                                  bidirectional=True)
    assert not any("bias" in name for name in custom.state_dict())
    check_parity(custom, torch_gru, torch.randn(5, 2, 3, dtype=torch.float64), None, torch.float64)


# --- dropout between layers --------------------------------------------------------------

@pytest.mark.parametrize("impl", IMPLS)
def test_dropout_eval_mode_matches_torch_gru(impl):
    torch.manual_seed(4)
    custom, torch_gru = make_pair(impl, torch.float64, input_size=3, hidden_size=4, num_layers=3, dropout=0.5)
    custom.eval()
    torch_gru.eval()
    check_parity(custom, torch_gru, torch.randn(5, 2, 3, dtype=torch.float64), None, torch.float64)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("num_layers,dropout,changes", [(2, 0.5, True), (3, 0.5, True), (2, 0.0, False), (1, 0.5, False)])
def test_dropout_acts_between_layers_in_training_only(impl, num_layers, dropout, changes):
    torch.manual_seed(5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dropout with one layer warns, like nn.GRU
        gru = GRU(3, 4, num_layers=num_layers, dropout=dropout, impl=impl)
    x = torch.randn(6, 3, 3)
    gru.eval()
    out_eval, hn_eval = gru(x)
    gru.train()
    out_train, hn_train = gru(x)
    if changes:
        assert not torch.allclose(out_train, out_eval)
        # The first layer sees no dropout, so its final state is unchanged.
        torch.testing.assert_close(hn_train[0], hn_eval[0])
    else:
        torch.testing.assert_close(out_train, out_eval)
        torch.testing.assert_close(hn_train, hn_eval)


@pytest.mark.parametrize("impl", IMPLS)
def test_dropout_one_zeroes_the_inputs_of_later_layers_like_torch_gru(impl):
    # With p=1 dropout is deterministic (all zeros), so train mode can be compared exactly:
    # this checks that dropout is applied between layers and not after the last one.
    torch.manual_seed(6)
    custom, torch_gru = make_pair(impl, torch.float64, input_size=3, hidden_size=4, num_layers=2, dropout=1.0,
                                  bidirectional=True)
    custom.train()
    torch_gru.train()
    check_parity(custom, torch_gru, torch.randn(5, 2, 3, dtype=torch.float64), None, torch.float64)


def test_dropout_with_one_layer_warns_like_torch_gru():
    with pytest.warns(UserWarning, match="dropout"):
        GRU(3, 4, num_layers=1, dropout=0.3)


# --- reset="before" against a naive transcription ---------------------------------------------

def naive_layer(x, h0, w_ih, w_hh, b_ih, b_hh, reset):
    """The equations of DESIGN.md, one gate at a time, with separately sliced weights."""
    H = w_hh.shape[1]
    W_ir, W_iz, W_in = w_ih[:H], w_ih[H:2 * H], w_ih[2 * H:]
    W_hr, W_hz, W_hn = w_hh[:H], w_hh[H:2 * H], w_hh[2 * H:]
    b_ir, b_iz, b_in = b_ih[:H], b_ih[H:2 * H], b_ih[2 * H:]
    b_hr, b_hz, b_hn = b_hh[:H], b_hh[H:2 * H], b_hh[2 * H:]
    h = h0
    outputs = []
    for t in range(x.shape[0]):
        r = torch.sigmoid(x[t] @ W_ir.T + b_ir + h @ W_hr.T + b_hr)
        z = torch.sigmoid(x[t] @ W_iz.T + b_iz + h @ W_hz.T + b_hz)
        if reset == "before":
            n = torch.tanh(x[t] @ W_in.T + b_in + (r * h) @ W_hn.T + b_hn)
        else:
            n = torch.tanh(x[t] @ W_in.T + b_in + r * (h @ W_hn.T + b_hn))
        h = z * h + (1 - z) * n
        outputs.append(h)
    return torch.stack(outputs), h


def naive_gru(params, x, h0, num_layers, bidirectional, reset):
    """Layers and directions composed by hand: layer l+1 reads both directions of layer l."""
    finals = []
    for layer in range(num_layers):
        forward_out, forward_h = naive_layer(
            x, h0[len(finals)], *(params[f"{k}_l{layer}"] for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")),
            reset,
        )
        finals.append(forward_h)
        if bidirectional:
            # Backward direction: read x from the last step to the first.
            reversed_x = torch.stack([x[t] for t in reversed(range(x.shape[0]))])
            backward_out, backward_h = naive_layer(
                reversed_x, h0[len(finals)],
                *(params[f"{k}_l{layer}_reverse"] for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")), reset,
            )
            finals.append(backward_h)
            backward_out = torch.stack([backward_out[t] for t in reversed(range(x.shape[0]))])
            x = torch.cat([forward_out, backward_out], dim=-1)
        else:
            x = forward_out
    return x, torch.stack(finals)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("reset", ["before", "after"])
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (1, True), (2, False), (3, True)])
def test_matches_naive_transcription(impl, reset, num_layers, bidirectional):
    torch.manual_seed(7)
    T, B, I, H = 5, 2, 3, 4
    D = 2 if bidirectional else 1
    gru = GRU(I, H, num_layers=num_layers, bidirectional=bidirectional, reset=reset, impl=impl).double()
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(num_layers * D, B, H, dtype=torch.float64, requires_grad=True)
    params = dict(gru.named_parameters())

    output, h_n = gru(x, h0)
    expected_output, expected_h_n = naive_gru(params, x, h0, num_layers, bidirectional, reset)
    assert_close(output, expected_output, torch.float64, "output")
    assert_close(h_n, expected_h_n, torch.float64, "h_n")

    inputs = [x, h0, *params.values()]
    out_weight, h_weight = torch.randn_like(output), torch.randn_like(h_n)
    grads = torch.autograd.grad((output * out_weight).sum() + (h_n * h_weight).sum(), inputs)
    expected = torch.autograd.grad((expected_output * out_weight).sum() + (expected_h_n * h_weight).sum(), inputs)
    for name, g, e in zip(["input", "h0", *params], grads, expected):
        assert_close(g, e, torch.float64, f"grad of {name}")


def test_reset_variants_differ():
    # Guards the test above: if both variants computed the same thing it would prove nothing.
    torch.manual_seed(8)
    after = GRU(3, 4, reset="after", impl="reference").double()
    before = GRU(3, 4, reset="before", impl="reference").double()
    before.load_state_dict(after.state_dict())
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    h0 = torch.randn(1, 2, 4, dtype=torch.float64)
    assert (after(x, h0)[0] - before(x, h0)[0]).abs().max() > 1e-3


# --- gradcheck ---------------------------------------------------------------------------------

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("reset", ["after", "before"])
def test_gradcheck(impl, reset):
    torch.manual_seed(9)
    T, B, I, H, L = 3, 2, 3, 2, 2
    gru = GRU(I, H, num_layers=L, bidirectional=True, reset=reset, impl=impl).double()
    names = [name for name, _ in gru.named_parameters()]
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(L * 2, B, H, dtype=torch.float64, requires_grad=True)
    weights = [p.detach().clone().requires_grad_(True) for p in gru.parameters()]

    def f(x, h0, *weights):
        return functional_call(gru, dict(zip(names, weights)), (x, h0))

    assert torch.autograd.gradcheck(f, (x, h0, *weights))


# --- parameters and state dict -------------------------------------------------------------------

def test_state_dict_matches_torch_gru_and_loads_both_ways():
    torch.manual_seed(10)
    custom = GRU(5, 4, num_layers=2, bidirectional=True)
    torch_gru = nn.GRU(5, 4, num_layers=2, bidirectional=True)
    custom_sd, torch_sd = custom.state_dict(), torch_gru.state_dict()
    assert list(custom_sd) == list(torch_sd)  # same keys, same order
    assert [v.shape for v in custom_sd.values()] == [v.shape for v in torch_sd.values()]
    assert custom_sd["weight_ih_l1_reverse"].shape == (12, 8)

    custom.load_state_dict(torch_sd, strict=True)
    for key, value in custom.state_dict().items():
        assert torch.equal(value, torch_sd[key]), key
    fresh_torch = nn.GRU(5, 4, num_layers=2, bidirectional=True)
    fresh_custom = GRU(5, 4, num_layers=2, bidirectional=True)
    fresh_torch.load_state_dict(fresh_custom.state_dict(), strict=True)
    for key, value in fresh_torch.state_dict().items():
        assert torch.equal(value, fresh_custom.state_dict()[key]), key


def test_initialisation_is_uniform_in_inverse_sqrt_hidden():
    torch.manual_seed(11)
    H = 16
    gru = GRU(8, H, num_layers=2)
    bound = H ** -0.5
    values = torch.cat([p.detach().flatten() for p in gru.parameters()])
    assert values.abs().max() <= bound
    assert values.min() < -0.9 * bound and values.max() > 0.9 * bound  # spans the range
    assert abs(values.mean()) < 0.1 * bound
    before = [p.detach().clone() for p in gru.parameters()]
    gru.reset_parameters()
    assert all(not torch.equal(a, b.detach()) for a, b in zip(before, gru.parameters()))


def test_extra_repr_shows_sizes_and_reset():
    text = repr(GRU(3, 4, num_layers=2, bidirectional=True, reset="before", impl="reference"))
    assert "3, 4" in text and "num_layers=2" in text and "bidirectional=True" in text
    assert "reset='before'" in text and "impl='reference'" in text


# --- implementation details that matter ------------------------------------------------------------

def test_impl_picks_the_layer_function():
    from grutrain.gru.fused import fused_gru_layer

    assert layer_function("fused") is fused_gru_layer
    assert layer_function("reference") is reference_gru_layer


def test_reference_layer_backward_does_not_index_per_step():
    # x_proj[t] in the loop puts a SelectBackward per step in the graph, whose backward
    # materialises a full [T, B, 3H] gradient each: O(T^2). unbind gives one UnbindBackward.
    x = torch.randn(7, 2, 3, requires_grad=True)
    w_ih, w_hh = torch.randn(12, 3), torch.randn(12, 4)
    output, _ = reference_gru_layer(x, torch.zeros(2, 4), w_ih, w_hh, torch.zeros(12), torch.zeros(12))
    seen, stack = set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    names = {type(node).__name__ for node in seen}
    assert "UnbindBackward0" in names
    assert not any(name.startswith("SelectBackward") for name in names), names


def test_reference_layer_state_carries_across_steps():
    # The state of step t must feed step t+1: feeding the same input at every step from h0 = 0
    # must not give the same output at every step.
    torch.manual_seed(12)
    x = torch.randn(1, 2, 3).expand(4, 2, 3)
    output, h_T = reference_gru_layer(x, torch.zeros(2, 4), torch.randn(12, 3), torch.randn(12, 4), None, None)
    assert not torch.allclose(output[0], output[1])
    torch.testing.assert_close(output[-1], h_T)


# --- errors ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "make_input,make_hx,match",
    [
        (lambda: torch.randn(5), None, "2-D .* or 3-D"),
        (lambda: torch.randn(2, 5, 3, 3), None, "2-D .* or 3-D"),
        (lambda: torch.randn(5, 2, 4), None, "input_size=3"),
        (lambda: torch.randn(5, 4), None, "input_size=3"),
        (lambda: torch.randn(0, 2, 3), None, "sequence length"),
        (lambda: torch.randn(5, 2, 3).double(), None, "dtype"),
        (lambda: torch.randn(5, 2, 3), lambda: torch.randn(2, 2, 4), r"hx of shape \[4, 2, 4\]"),  # layers*dirs
        (lambda: torch.randn(5, 2, 3), lambda: torch.randn(4, 3, 4), r"hx of shape \[4, 2, 4\]"),  # batch
        (lambda: torch.randn(5, 2, 3), lambda: torch.randn(4, 2, 5), r"hx of shape \[4, 2, 4\]"),  # hidden
        (lambda: torch.randn(5, 2, 3), lambda: torch.randn(4, 4), "3-D"),
        (lambda: torch.randn(5, 3), lambda: torch.randn(4, 1, 4), "2-D"),
        (lambda: torch.randn(5, 3), lambda: torch.randn(4, 5), r"hx of shape \[4, 4\]"),
        (lambda: torch.randn(5, 2, 3), lambda: torch.randn(4, 2, 4).double(), "dtype"),
    ],
    ids=[
        "input_1d", "input_4d", "input_size", "unbatched_input_size", "empty_sequence", "input_dtype",
        "hx_layers", "hx_batch", "hx_hidden", "hx_2d_for_batched", "hx_3d_for_unbatched", "hx_unbatched_hidden",
        "hx_dtype",
    ],
)
def test_bad_inputs_raise_value_error(make_input, make_hx, match):
    gru = GRU(3, 4, num_layers=2, bidirectional=True)
    with pytest.raises(ValueError, match=match):
        gru(make_input(), None if make_hx is None else make_hx())


def test_batch_first_hx_shape_is_checked_against_the_batch_dimension():
    gru = GRU(3, 4, batch_first=True)
    gru(torch.randn(2, 5, 3), torch.randn(1, 2, 4))  # batch 2, seq 5
    with pytest.raises(ValueError, match="hx"):
        gru(torch.randn(2, 5, 3), torch.randn(1, 5, 4))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"reset": "middle"}, "reset"),
        ({"reset": "After"}, "reset"),
        ({"impl": "cudnn"}, "impl"),
        ({"dropout": 1.5}, "dropout"),
        ({"num_layers": 0}, "num_layers"),
        ({"hidden_size": 0}, "hidden_size"),
    ],
)
def test_bad_constructor_arguments_raise_value_error(kwargs, match):
    arguments = {"input_size": 3, "hidden_size": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        GRU(**arguments)


def test_reference_layer_rejects_bad_reset():
    with pytest.raises(ValueError, match="reset"):
        reference_gru_layer(torch.randn(2, 1, 3), torch.zeros(1, 4), torch.randn(12, 3), torch.randn(12, 4),
                            reset="sideways")
