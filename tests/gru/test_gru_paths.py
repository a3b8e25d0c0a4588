"""Path selection (grutrain.gru.paths): which implementation runs a layer in which context, and how
a newly registered one is picked up (docs/adding-a-gru-kernel.md)."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from torch import nn

import grutrain.gru.layer as layer_module
from grutrain.gru import native, paths
from grutrain.gru.fused import fused_gru_layer
from grutrain.gru.layer import GRU
from grutrain.gru.reference import reference_gru_layer, scan_available


def test_impls_are_the_selectable_implementations_in_registry_order():
    assert paths.IMPLS == ("native", "fused", "reference")
    assert [impl.name for impl in paths.IMPLEMENTATIONS if impl.selectable] == list(paths.IMPLS)
    assert all(impl.runs_in <= set(paths.CONTEXTS) for impl in paths.IMPLEMENTATIONS)
    with pytest.raises(KeyError):
        paths.implementation("nope")


@pytest.mark.parametrize("context, expected", [
    ("eager", {"native": "native", "fused": "fused", "reference": "reference"}),
    ("trace", {"native": "scripted", "fused": "scripted", "reference": "scripted"}),
    ("export", {"native": "scan", "fused": "scan", "reference": "scan"}),
    ("compile", {"native": "reference", "fused": "reference", "reference": "reference"}),
    ("functorch", {"native": "reference", "fused": "reference", "reference": "reference"}),
])
def test_each_context_gets_a_form_it_can_record(monkeypatch, context, expected):
    if context == "export" and not scan_available():
        expected = dict.fromkeys(expected, "reference")  # the last resort: unrolled
    if context == "eager" and not native.available():
        expected["native"] = "fused"  # no compiler here: the next in the table
    monkeypatch.setattr(paths, "current_context", lambda: context)
    assert {impl: paths.select(impl).name for impl in expected} == expected


def _context_seen(run) -> str:
    """The context paths.current_context() reports inside `run(module)`."""
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(paths.current_context())
            return x * 2

    run(Probe())
    return seen[-1]


def test_current_context_tells_the_recorders_apart():
    x = torch.ones(3)
    assert _context_seen(lambda m: m(x)) == "eager"
    assert _context_seen(lambda m: torch.func.grad(lambda t: m(t).sum())(x)) == "functorch"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert _context_seen(lambda m: torch.jit.trace(m, (x,), check_trace=False)) == "trace"
    assert _context_seen(lambda m: torch.export.export(m, (x,))) == "export"


def test_layer_function_is_the_selected_implementations_layer():
    assert paths.layer_function("fused") is fused_gru_layer is paths.select("fused").layer
    assert paths.layer_function("reference") is reference_gru_layer


def _kernel(calls):
    """A stand-in kernel: the reference equations, counting its calls."""
    def layer(*args, **kwargs):
        calls.append(1)
        return reference_gru_layer(*args, **kwargs)
    return layer


def _register(monkeypatch, impl: paths.Implementation):
    """What one registry line does: the implementation first in the table, its name a valid impl."""
    monkeypatch.setattr(paths, "IMPLEMENTATIONS", (impl, *paths.IMPLEMENTATIONS))
    monkeypatch.setattr(layer_module, "IMPLS", (impl.name, *paths.IMPLS))


def test_a_registered_kernel_runs_when_asked_for_and_where_it_can(monkeypatch):
    calls = []
    _register(monkeypatch, paths.Implementation(
        "stand-in", _kernel(calls), frozenset({"eager"}), supports=lambda x: x.dtype == torch.float32))
    gru, oracle = GRU(3, 4, num_layers=2, impl="stand-in"), nn.GRU(3, 4, num_layers=2)
    oracle.load_state_dict(gru.state_dict())
    x = torch.randn(5, 2, 3)
    for a, b in zip(gru(x), oracle(x)):
        torch.testing.assert_close(a, b)
    assert len(calls) == 2  # one call per layer and direction
    gru.double()(x.double())  # a dtype it does not take: the next in the table runs
    assert len(calls) == 2
    assert paths.select("fused").name == "fused"  # asked for by name only


def test_an_unavailable_kernel_falls_back_to_the_next_in_the_table(monkeypatch):
    calls = []
    _register(monkeypatch, paths.Implementation("missing", _kernel(calls), frozenset({"eager"}),
                                                available=lambda: False))
    assert paths.select("missing").name == ("native" if native.available() else "fused")
    GRU(3, 4, impl="missing")(torch.randn(5, 2, 3))
    assert calls == []


@pytest.mark.parametrize("saved", [False, True])
def test_an_output_that_is_the_saved_state_reaches_the_caller_as_a_copy(monkeypatch, saved):
    _register(monkeypatch, dataclasses.replace(paths.implementation("fused"), name="kernel",
                                               output_is_saved_state=saved))
    gru = GRU(3, 4, impl="kernel")
    out, _ = gru(torch.randn(5, 2, 3))
    out.relu_()  # in place on the caller's copy: backward must still see the states it saved
    if saved:
        out.sum().backward()
    else:
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            out.sum().backward()


def test_the_native_kernel_is_preferred_and_falls_back_to_fused_where_it_cannot_run(monkeypatch):
    assert GRU(3, 4).impl == "native"
    if native.available():
        assert paths.select("native", torch.zeros(2, 1, 3)).name == "native"
        assert paths.select("native", torch.zeros(2, 1, 3, dtype=torch.float16)).name == "fused"  # a dtype it lacks
    unbuilt = dataclasses.replace(paths.implementation("native"), available=lambda: False)
    monkeypatch.setattr(paths, "IMPLEMENTATIONS", (unbuilt, *paths.IMPLEMENTATIONS[1:]))
    assert paths.select("native", torch.zeros(2, 1, 3)).name == "fused"
