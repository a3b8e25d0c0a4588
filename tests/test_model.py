"""grutrain.model.Dropout (the cheaper CPU mask) against what nn.Dropout promises: the fraction
dropped, kept values scaled so that the expectation is the input, the gradient through the same
mask, independent elements, the seeded generator, and nn.Dropout itself where it takes over."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from grutrain.model import Dropout


def _draw(p: float, shape=(64, 64, 256), seed: int = 0, transposed: bool = False):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(123)) + 3.0  # never 0
    if transposed:
        x = x.transpose(0, 1)
    x.requires_grad_()
    torch.manual_seed(seed)
    return x, Dropout(p)(x)


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_drops_a_fraction_p_and_scales_the_rest_to_an_unbiased_output(p):
    x, out = _draw(p)
    keep = out != 0
    n = keep.numel()
    dropped = 1 - keep.double().mean().item()
    assert abs(dropped - p) < 5 * (p * (1 - p) / n) ** 0.5
    k = round(p * 65536)
    scale = 65536 / (65536 - k)
    torch.testing.assert_close(out[keep], x.detach()[keep] * scale)
    assert scale * (1 - k / 65536) == pytest.approx(1.0)  # E[out] = x


def test_gradient_flows_through_the_same_mask():
    x, out = _draw(0.2, transposed=True)
    g = torch.randn(out.shape)
    (grad,) = torch.autograd.grad(out, x, g)
    keep = out.detach() != 0
    torch.testing.assert_close(grad, g * keep * (65536 / (65536 - round(0.2 * 65536))))


def test_elements_are_independent():
    """Neighbouring elements (the same 64-bit draw and the next one) are uncorrelated."""
    _, out = _draw(0.5, shape=(1 << 20,))
    keep = (out != 0).double()
    c = keep - keep.mean()
    bound = 5 / keep.numel() ** 0.5
    for lag in (1, 3, 4, 5):
        corr = (c[:-lag] * c[lag:]).mean() / c.var()
        assert abs(corr.item()) < bound, lag


def test_the_seed_decides_the_mask():
    _, a = _draw(0.3, seed=1)
    _, b = _draw(0.3, seed=1)
    _, c = _draw(0.3, seed=2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_edges_and_eval_mode_are_nn_dropouts(p):
    x = torch.randn(8, 5)
    torch.manual_seed(0)
    ours = Dropout(p)(x)
    torch.manual_seed(0)
    theirs = nn.Dropout(p)(x)
    torch.testing.assert_close(ours, theirs)
    assert torch.equal(Dropout(0.5).eval()(x), x)
