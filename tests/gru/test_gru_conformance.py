"""grutrain.gru.layer.GRU as a drop-in for torch.nn.GRU in code written for torch (issue 15).

The cases come from torch.nn.GRU's documentation (inputs and outputs, PackedSequence, the
argument checks of RNNBase) and from the patterns of torch's own RNN tests in test_nn.py
(a packed batch against each sequence run on its own, sorted and unsorted; gradients through
pad_packed_sequence; the argument and shape checks; flatten_parameters), plus what user code
does with an nn.GRU: in-place ops on its output, torch.func transforms, torch.export,
torch.jit.trace, gradient penalties.

Every case runs on both paths (fused, reference) and compares outputs, h_n and every gradient
with an oracle: torch.nn.GRU with the same weights for reset="after"; for reset="before"
(which torch lacks) grutrain's step-by-step reference run eagerly on plain tensors, the
definition the parity tests in test_gru.py hold against a naive transcription.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from grutrain.gru.layer import GRU
from grutrain.gru.paths import IMPLS as PATHS  # every registered implementation
from grutrain.gru.paths import implementation

DT = torch.float64
TOL = dict(atol=1e-10, rtol=0)
RESETS = ["after", "before"]


def make(impl, reset, **kwargs):
    """(grutrain GRU, oracle) with the same weights, float64."""
    if not implementation(impl).available():  # e.g. a native kernel that could not be built here
        pytest.skip(f"the {impl} implementation is not available here")
    kwargs = {"input_size": 3, "hidden_size": 4, **kwargs}
    gru = GRU(**kwargs, reset=reset, impl=impl, dtype=DT)
    if reset == "after":
        oracle = nn.GRU(**kwargs, dtype=DT)
    else:
        oracle = GRU(**kwargs, reset=reset, impl="reference", dtype=DT)
    oracle.load_state_dict(gru.state_dict())
    return gru, oracle


def grads(module, *tensors):
    """Gradients of every parameter (by name) and of `tensors`, then cleared."""
    result = {name: p.grad.clone() for name, p in module.named_parameters()}
    for i, t in enumerate(tensors):
        result[f"input{i}"] = t.grad.clone()
        t.grad = None
    module.zero_grad(set_to_none=True)
    return result


def assert_same_grads(actual, expected):
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], **TOL, msg=lambda m: f"grad of {name}: {m}")


def leaf(*shape):
    return torch.randn(*shape, dtype=DT).requires_grad_()


# --------------------------------------------------------------------------- 1. PackedSequence


@pytest.mark.parametrize("impl", PATHS)
@pytest.mark.parametrize("reset", RESETS)
@pytest.mark.parametrize("enforce_sorted", [True, False], ids=["sorted", "unsorted"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_packed_sequence_in_packed_sequence_out(impl, reset, enforce_sorted, bidirectional):
    # batch_first=True: a PackedSequence's data ignores it, as torch documents.
    gru, oracle = make(impl, reset, num_layers=2, bidirectional=bidirectional, batch_first=True)
    lengths = torch.tensor([6, 4, 4, 1]) if enforce_sorted else torch.tensor([4, 6, 1, 4])
    x = leaf(6, 4, 3)
    hx = leaf(2 * gru.num_directions, 4, 4)
    weight = torch.randn(6, 4, 4 * gru.num_directions, dtype=DT)

    results = []
    for module in (gru, oracle):
        packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
        out, h_n = module(packed, hx)
        assert isinstance(out, PackedSequence)
        assert torch.equal(out.batch_sizes, packed.batch_sizes)
        for a, b in ((out.sorted_indices, packed.sorted_indices), (out.unsorted_indices, packed.unsorted_indices)):
            assert (a is None and b is None) or torch.equal(a, b)
        padded, out_lengths = pad_packed_sequence(out)
        assert torch.equal(out_lengths, lengths)
        ((padded * weight).sum() + h_n.pow(2).sum()).backward()
        results.append((out.data, h_n, grads(module, x, hx)))
    (data, h_n, g), (data_o, h_n_o, g_o) = results
    torch.testing.assert_close(data, data_o, **TOL)
    torch.testing.assert_close(h_n, h_n_o, **TOL)
    assert_same_grads(g, g_o)


@pytest.mark.parametrize("impl", PATHS)
@pytest.mark.parametrize("reset", RESETS)
def test_packed_sequence_matches_each_sequence_run_alone(impl, reset):
    # torch's test_variable_sequence: the packed batch gives what each sequence gives alone.
    gru, _ = make(impl, reset, bidirectional=True)
    lengths = [3, 5, 2]
    xs = [torch.randn(n, 3, dtype=DT) for n in lengths]
    packed = nn.utils.rnn.pack_sequence(xs, enforce_sorted=False)
    out, h_n = gru(packed)
    padded, _ = pad_packed_sequence(out)
    for b, x in enumerate(xs):
        out_b, h_b = gru(x)  # unbatched
        torch.testing.assert_close(padded[: lengths[b], b], out_b, **TOL)
        torch.testing.assert_close(h_n[:, b], h_b, **TOL)


def test_packed_sequence_refuses_lengths_too():
    gru = GRU(3, 4)
    packed = pack_padded_sequence(torch.randn(4, 2, 3), torch.tensor([4, 2]))
    with pytest.raises(ValueError, match="PackedSequence"):
        gru(packed, lengths=torch.tensor([4, 2]))


# --------------------------------------------------------------------------- 2. in-place changes of the output

IN_PLACE = {
    "relu_inplace": lambda t: nn.ReLU(inplace=True)(t),
    "dropout_inplace": lambda t: (torch.manual_seed(0), nn.Dropout(0.5, inplace=True)(t))[1],
    "iadd": lambda t: t.__iadd__(1.0),
    "mul_": lambda t: t.mul_(torch.linspace(0.5, 2.0, t.shape[-1], dtype=t.dtype)),
}


@pytest.mark.parametrize("impl", PATHS)
@pytest.mark.parametrize("reset", RESETS)
@pytest.mark.parametrize("op", IN_PLACE)
@pytest.mark.parametrize("layout", ["time_major", "batch_first", "unbatched"])
def test_output_may_be_changed_in_place_before_backward(impl, reset, op, layout):
    gru, oracle = make(impl, reset, num_layers=2, batch_first=layout == "batch_first")
    x = leaf(5, 3) if layout == "unbatched" else leaf(5, 2, 3)
    results = []
    for module in (gru, oracle):
        out, h_n = module(x)
        out = IN_PLACE[op](out)
        h_n = h_n.mul_(2)
        (out.pow(2).sum() + h_n.sum()).backward()
        results.append((out.detach(), grads(module, x)))
    torch.testing.assert_close(results[0][0], results[1][0], **TOL)
    assert_same_grads(results[0][1], results[1][1])


# --------------------------------------------------------------------------- 3. torch.func transforms


@pytest.mark.parametrize("impl", PATHS)
@pytest.mark.parametrize("reset", RESETS)
def test_func_grad_over_parameters(impl, reset):
    gru, oracle = make(impl, reset, num_layers=2)
    x = torch.randn(5, 2, 3, dtype=DT)

    def loss(module):
        def f(params):
            out, h_n = functional_call(module, params, (x,))
            return out.pow(2).sum() + h_n.sum()
        return f

    got = torch.func.grad(loss(gru))(dict(gru.named_parameters()))
    want = torch.func.grad(loss(oracle))(dict(oracle.named_parameters()))
    assert_same_grads(got, want)


@pytest.mark.parametrize("impl", PATHS)
@pytest.mark.parametrize("reset", RESETS)
def test_func_vmap_and_jacrev(impl, reset):
    gru, oracle = make(impl, reset, bidirectional=True)
    xs = torch.randn(3, 4, 2, 3, dtype=DT)  # vmapped over 3 batches of [T=4, B=2, I=3]
    got = torch.func.vmap(lambda x: gru(x)[0])(xs)
    want = torch.stack([oracle(x)[0] for x in xs])  # what vmap means (torch.nn.GRU has no batching rule)
    torch.testing.assert_close(got, want, **TOL)

    x = torch.randn(4, 3, dtype=DT)  # unbatched
    got = torch.func.jacrev(lambda x: gru(x)[1])(x)
    want = torch.func.jacrev(lambda x: oracle(x)[1])(x)
    torch.testing.assert_close(got, want, **TOL)


# --------------------------------------------------------------------------- 4. torch.export


class Tagger(nn.Module):
    """A user's model around the GRU."""

    def __init__(self, gru: nn.Module):
        super().__init__()
        directions = 2 if gru.bidirectional else 1
        self.gru, self.head = gru, nn.Linear(gru.hidden_size * directions, 2, dtype=DT)

    def forward(self, x):
        out, h_n = self.gru(x)
        return self.head(out), h_n


# Exporting takes ~10 s each here, so not the full product: under torch.export both paths run the
# same scan-based equations, and the fused path is the one that used to fail.
@pytest.mark.parametrize("impl, reset, grad", [
    ("fused", "after", True), ("fused", "after", False), ("fused", "before", True), ("reference", "after", True),
])
def test_torch_export_of_a_model_containing_the_gru(impl, reset, grad):
    gru, oracle = make(impl, reset, bidirectional=True)
    model, reference = Tagger(gru), Tagger(oracle)
    reference.head.load_state_dict(model.head.state_dict())
    # Dynamic sequence and batch dims, as torch.nn.GRU exports them.
    dims = {"x": {0: torch.export.Dim("sequence"), 1: torch.export.Dim("batch")}}
    with torch.set_grad_enabled(grad):
        program = torch.export.export(model, (torch.randn(5, 2, 3, dtype=DT),), dynamic_shapes=dims)
    for shape in [(5, 2, 3), (9, 3, 3), (2, 4, 3)]:
        x = torch.randn(*shape, dtype=DT)
        for a, b in zip(program.module()(x), reference(x)):
            torch.testing.assert_close(a, b, **TOL)


# --------------------------------------------------------------------------- 5. torch.jit.trace


@pytest.mark.parametrize("impl", PATHS)
@pytest.mark.parametrize("reset", RESETS)
def test_jit_trace_runs_at_any_length(impl, reset):
    gru, oracle = make(impl, reset, num_layers=2, bidirectional=True, batch_first=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation and tracer warnings
        traced = torch.jit.trace(Tagger(gru), (torch.randn(3, 5, 3, dtype=DT),))  # with its sanity check
    reference = Tagger(oracle)
    reference.head.load_state_dict(traced.head.state_dict())
    for shape in [(3, 5, 3), (2, 9, 3), (4, 1, 3)]:  # the traced length, longer, shorter
        x = torch.randn(*shape, dtype=DT)
        for a, b in zip(traced(x), reference(x)):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, **TOL)


# --------------------------------------------------------------------------- 6. double backward


@pytest.mark.parametrize("impl", PATHS)
@pytest.mark.parametrize("reset", RESETS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_gradient_penalty_double_backward(impl, reset, bidirectional):
    gru, oracle = make(impl, reset, num_layers=2, bidirectional=bidirectional)
    x = leaf(5, 2, 3)
    hx = leaf(2 * gru.num_directions, 2, 4)
    results = []
    for module in (gru, oracle):
        out, h_n = module(x, hx)
        (dx,) = torch.autograd.grad(out.pow(2).sum() + h_n.sum(), x, create_graph=True)
        (dx.pow(2).sum() + out.sum()).backward()
        results.append(grads(module, x, hx))
    assert_same_grads(*results)


@pytest.mark.parametrize("reset", RESETS)
def test_fused_path_passes_gradgradcheck(reset):
    gru = GRU(2, 3, reset=reset, impl="fused", dtype=DT)
    x, hx = leaf(4, 2, 2), leaf(1, 2, 3)
    params = tuple(gru.parameters())

    def f(x, hx, *params):
        weights = dict(zip([name for name, _ in gru.named_parameters()], params))
        return functional_call(gru, weights, (x, hx))

    # functional_call under gradgradcheck is no torch.func transform: the fused path runs.
    assert torch.autograd.gradgradcheck(f, (x, hx, *params))


# --------------------------------------------------------------------------- 7. the RNNBase surface


def test_rnnbase_attributes_and_methods_match_torch():
    kwargs = dict(input_size=3, hidden_size=4, num_layers=2, bidirectional=True, bias=False)
    gru, ref = GRU(**kwargs), nn.GRU(**kwargs)
    assert (gru.mode, gru.proj_size) == (ref.mode, ref.proj_size) == ("GRU", 0)
    assert gru._all_weights == ref._all_weights
    assert gru._flat_weights_names == ref._flat_weights_names
    assert [[w.shape for w in ws] for ws in gru.all_weights] == [[w.shape for w in ws] for ws in ref.all_weights]
    named = dict(gru.named_parameters())
    assert all(w is named[n] for ws, ns in zip(gru.all_weights, gru._all_weights) for w, n in zip(ws, ns))
    assert all(w is named[n] for w, n in zip(gru._flat_weights, gru._flat_weights_names))


class Encoder(nn.Module):
    """The common pattern of user code written for cuDNN: flatten_parameters() in forward."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        self.rnn.flatten_parameters()
        return self.rnn(x)


@pytest.mark.parametrize("impl", PATHS)
def test_flatten_parameters_keeps_results_and_parameters(impl):
    gru, oracle = make(impl, "after", num_layers=2)
    before = {name: p for name, p in gru.named_parameters()}
    x = torch.randn(5, 2, 3, dtype=DT)
    for a, b in zip(Encoder(gru)(x), Encoder(oracle)(x)):
        torch.testing.assert_close(a, b, **TOL)
    assert all(p is before[name] for name, p in gru.named_parameters())


# --------------------------------------------------------------------------- 8. errors and argument checks

BAD_ARGUMENTS = {
    "bias_string": dict(bias="False"),
    "batch_first_string": dict(batch_first="False"),
    "input_size_float": dict(input_size=3.0),
    "hidden_size_float": dict(hidden_size=4.0),
    "num_layers_float": dict(num_layers=1.0),
    "proj_size": dict(proj_size=2),
    "hidden_size_zero": dict(hidden_size=0),
    "num_layers_zero": dict(num_layers=0),
    "dropout_above_one": dict(dropout=1.5),
    "dropout_string": dict(dropout="0.1"),
}


@pytest.mark.parametrize("case", BAD_ARGUMENTS)
def test_bad_constructor_arguments_raise_torch_error_type(case):
    kwargs = {"input_size": 3, "hidden_size": 4, **BAD_ARGUMENTS[case]}
    with pytest.raises(Exception) as torch_error:
        nn.GRU(**kwargs)
    with pytest.raises(torch_error.type):
        GRU(**kwargs)


def test_proj_size_zero_is_accepted():
    # torch.nn.GRU refuses any proj_size keyword; 0 (RNNBase's default) changes nothing here.
    assert GRU(3, 4, proj_size=0).proj_size == 0


BAD_INPUTS = {  # (input, hx) for GRU(3, 4, num_layers=2, bidirectional=True)
    "input_4d": (lambda: torch.randn(2, 5, 2, 3), None),
    "input_size": (lambda: torch.randn(5, 2, 4), None),
    "empty_sequence": (lambda: torch.randn(0, 2, 3), None),
    "input_dtype": (lambda: torch.randn(5, 2, 3, dtype=torch.float64), None),
    "hx_layers": (lambda: torch.randn(5, 2, 3), lambda: torch.randn(2, 2, 4)),
    "hx_batch": (lambda: torch.randn(5, 2, 3), lambda: torch.randn(4, 3, 4)),
    "hx_hidden": (lambda: torch.randn(5, 2, 3), lambda: torch.randn(4, 2, 5)),
    "hx_2d_for_batched": (lambda: torch.randn(5, 2, 3), lambda: torch.randn(4, 4)),
    "hx_3d_for_unbatched": (lambda: torch.randn(5, 3), lambda: torch.randn(4, 1, 4)),
    "hx_unbatched_hidden": (lambda: torch.randn(5, 3), lambda: torch.randn(4, 5)),
    "hx_dtype": (lambda: torch.randn(5, 2, 3), lambda: torch.randn(4, 2, 4, dtype=torch.float64)),
}


@pytest.mark.parametrize("impl", PATHS)
@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_raise_an_error_torch_code_catches(impl, case):
    make_input, make_hx = BAD_INPUTS[case]
    kwargs = dict(input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    x, hx = make_input(), None if make_hx is None else make_hx()
    with pytest.raises(Exception) as torch_error:
        nn.GRU(**kwargs)(x, hx)
    with pytest.raises(torch_error.type):
        GRU(**kwargs, impl=impl)(x, hx)
