"""GRU(..., lengths=...) on right-padded batches against torch.nn.GRU on the same batch packed
(pack_padded_sequence): outputs at valid steps, h_n, and the gradients of the input, h0 and
every parameter."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from grutrain.gru.layer import GRU
from grutrain.gru.paths import IMPLS  # every registered implementation

ATOL = 1e-5  # float32


def assert_close(actual, expected, what):
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0, msg=lambda m: f"{what}: {m}")


def packed_torch_gru(gru: nn.GRU, x, h0, lengths, batch_first):
    """torch.nn.GRU on the packed batch, unpacked to the padded layout (zeros after each end)."""
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
    out, h_n = gru(packed, h0)
    total = x.shape[1] if batch_first else x.shape[0]
    out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=batch_first, total_length=total)
    return out, h_n


def forward_backward(run, module, x, h0, out_weight, h_weight):
    x = x.detach().clone().requires_grad_(True)
    h0 = None if h0 is None else h0.detach().clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    out, h_n = run(x, h0)
    ((out * out_weight).sum() + (h_n * h_weight).sum()).backward()
    grads = {name: p.grad for name, p in module.named_parameters()}
    grads["input"] = x.grad
    if h0 is not None:
        grads["h0"] = h0.grad
    return out, h_n, grads


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("with_h0", [False, True], ids=["no_h0", "h0"])
def test_lengths_match_torch_gru_on_a_packed_sequence(impl, num_layers, bidirectional, with_h0):
    torch.manual_seed(7 * num_layers + 3 * bidirectional + with_h0)
    B, T, I, H, D = 5, 7, 3, 4, 2 if bidirectional else 1
    reference = nn.GRU(I, H, num_layers, batch_first=True, bidirectional=bidirectional)
    custom = GRU(I, H, num_layers, batch_first=True, bidirectional=bidirectional, impl=impl)
    custom.load_state_dict(reference.state_dict())
    lengths = torch.tensor([7, 3, 1, 5, 7])  # unsorted, with the longest twice and a single step
    x = torch.randn(B, T, I)
    h0 = torch.randn(num_layers * D, B, H) if with_h0 else None
    out_weight, h_weight = torch.randn(B, T, D * H), torch.randn(num_layers * D, B, H)

    out_r, hn_r, grads_r = forward_backward(lambda x, h: packed_torch_gru(reference, x, h, lengths, True),
                                            reference, x, h0, out_weight, h_weight)
    out_c, hn_c, grads_c = forward_backward(lambda x, h: custom(x, h, lengths=lengths),
                                            custom, x, h0, out_weight, h_weight)
    valid = torch.arange(T) < lengths.unsqueeze(1)  # [B, T]
    assert_close(out_c[valid], out_r[valid], "output at valid steps")
    assert bool(out_c[~valid].eq(0).all()), "padded output positions must be zeros"
    assert_close(hn_c, hn_r, "h_n")
    assert grads_c.keys() == grads_r.keys()
    for name, grad in grads_r.items():
        assert grads_c[name] is not None, name
        assert_close(grads_c[name], grad, f"grad of {name}")
    assert bool(grads_c["input"][~valid].eq(0).all()), "padding must get no gradient"


@pytest.mark.parametrize("reset", ["after", "before"])
def test_time_major_input_and_both_resets(reset):
    """batch_first=False; reset="before" (which torch.nn.GRU lacks) against each sequence run alone."""
    torch.manual_seed(1)
    T, B, I, H = 6, 3, 2, 5
    gru = GRU(I, H, 2, bidirectional=True, reset=reset)
    lengths = torch.tensor([2, 6, 4])
    x = torch.randn(T, B, I)
    out, h_n = gru(x, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        alone_out, alone_h = gru(x[:n, b : b + 1])  # this sequence alone, no padding at all
        assert_close(out[:n, b], alone_out[:, 0], f"output of sequence {b}")
        assert_close(h_n[:, b], alone_h[:, 0], f"h_n of sequence {b}")
        assert bool(out[n:, b].eq(0).all())


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_full_lengths_give_what_no_lengths_gives(bidirectional):
    torch.manual_seed(2)
    gru = GRU(3, 4, 2, batch_first=True, bidirectional=bidirectional)
    x = torch.randn(4, 5, 3)
    out, h_n = gru(x)
    out_l, h_n_l = gru(x, lengths=torch.full((4,), 5))
    assert_close(out_l, out, "output")
    assert_close(h_n_l, h_n, "h_n")


def test_what_the_padding_holds_changes_nothing():
    torch.manual_seed(3)
    gru = GRU(3, 4, 2, batch_first=True, bidirectional=True)
    lengths = torch.tensor([4, 2, 3])
    x = torch.randn(3, 4, 3)
    junk = x.clone()
    junk[1, 2:] = 1e3
    junk[2, 3:] = -7.0
    out_a, h_a = gru(x, lengths=lengths)
    out_b, h_b = gru(junk, lengths=lengths)
    torch.testing.assert_close(out_b, out_a, atol=0, rtol=0)
    torch.testing.assert_close(h_b, h_a, atol=0, rtol=0)


def test_lengths_on_the_batch_first_example_of_the_docstring():
    torch.manual_seed(4)
    rnn = GRU(10, 20, 2)
    output, hn = rnn(torch.randn(5, 3, 10), torch.randn(2, 3, 20), lengths=torch.tensor([5, 2, 4]))
    assert output.shape == (5, 3, 20) and hn.shape == (2, 3, 20)
    assert bool(output[2:, 1].eq(0).all()) and not bool(output[:2, 1].eq(0).any())


@pytest.mark.parametrize("lengths, match", [
    (torch.tensor([3, 0]), "between 1 and the sequence length 3"),
    (torch.tensor([4, 1]), "between 1 and the sequence length 3"),
    (torch.tensor([3]), "one entry per sequence"),
    (torch.tensor([[3, 1]]), "one entry per sequence"),
    (torch.tensor([3.0, 1.0]), "integers"),
])
def test_bad_lengths_raise_value_error(lengths, match):
    gru = GRU(2, 3, batch_first=True)
    with pytest.raises(ValueError, match=match):
        gru(torch.randn(2, 3, 2), lengths=lengths)


def test_lengths_need_batched_input():
    with pytest.raises(ValueError, match="batched"):
        GRU(2, 3)(torch.randn(4, 2), lengths=torch.tensor([4]))
