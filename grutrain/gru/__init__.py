"""The GRU: a drop-in for torch.nn.GRU written from its equations (both reset variants).

Rule: imports only torch and its own modules, nothing else of grutrain, so the layer can be
copied out and used alone. `layer` is the nn.Module; `reference` the equations (the loop every
other path is checked against, and the forms tracers, compilers, torch.export and torch.func
record); `paths` the registry of implementations and which one runs in the current context;
`native` (with its C++ sources in `csrc/`) is the compiled kernel, built on first use and
preferred where it can run; `fused`, `fused_backward` and `matmul` are the Python fast path.
"""

from grutrain.gru.layer import GRU, IMPLS, RESETS, GRUInputError, reference_gru_layer

__all__ = ["GRU", "GRUInputError", "RESETS", "IMPLS", "reference_gru_layer"]
