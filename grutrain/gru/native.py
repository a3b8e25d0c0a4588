"""The native (C++) GRU kernel: one direction of one layer, forward and backward time loops as
torch operators, built on first use.

``native_gru_layer`` is a drop-in for ``fused_gru_layer`` (same signature, results, autocast and
double-backward behaviour); ``native_gru_cell`` is one no-grad step for generation. Both run the
operators of the library ``grutrain_native`` (schemas in ``csrc/gru_ops.cpp``, CPU kernels in
``csrc/gru_cpu.cpp`` behind the CPU dispatch key, autograd behind the Autograd key in
``csrc/gru_autograd.cpp``).

The library is compiled once per (torch version, sources, CPU instruction set, flags) with
``torch.utils.cpp_extension.load(..., is_python_module=False)`` into ``<kernels dir>/<key>/``, where
the kernels dir is ``$GRUTRAIN_KERNEL_DIR``, else ``$GRUTRAIN_CACHE_DIR/kernels``, else
``$XDG_CACHE_HOME/grutrain/kernels`` or ``~/.cache/grutrain/kernels``, under an ``fcntl.flock`` so concurrent processes build it once; later
processes only load the built file. Building prints one line on stderr. If the kernel cannot be
had (no compiler, a failed build, a CPU without AVX2) one notice line is printed and ``load()``
returns False: callers then use the Python fused path.

Imports only the standard library and torch. The C++ sources sit in ``csrc/`` beside this file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import sys
import threading
import time
import warnings

import torch
from torch import Tensor

__all__ = ["load", "available", "status", "supports", "reason", "kernels_dir", "native_gru_layer", "native_gru_cell",
           "native_stack_step", "stack_step_supported", "LIBRARY"]

LIBRARY = "grutrain_native"
RESETS = ("after", "before")
_CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
_SO_NAME = LIBRARY + ".so"
_BUILT_MARK = "BUILT.json"
_FAILED_MARK = "FAILED.json"
_BUILD_LOG = "build.log"

_lock = threading.Lock()
_state: dict = {"loaded": False, "reason": None, "build_seconds": None, "key": None, "path": None}
_ops = None  # torch.ops.grutrain_native once loaded


# --------------------------------------------------------------------------------------------
# Where and what to build
# --------------------------------------------------------------------------------------------


def kernels_dir() -> str:
    """Where built kernels live, one directory per key (see the module docstring)."""
    explicit = os.environ.get("GRUTRAIN_KERNEL_DIR")
    if explicit:
        return explicit
    root = os.environ.get("GRUTRAIN_CACHE_DIR")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(xdg, "grutrain")
    return os.path.join(root, "kernels")


def _isa() -> tuple[str | None, list[str], str | None]:
    """(instruction set name, compiler flags, reason if unusable). Follows what torch itself
    dispatches to (ATEN_CPU_CAPABILITY lowers it): the kernel uses ATen's Vectorized types."""
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64", "i686", "i386"):
        return "default-" + machine, [], None  # at::vec picks NEON etc. from the compiler's target
    capability = torch.backends.cpu.get_cpu_capability()
    if capability == "AVX512":
        flags = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c",
                 "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"]
        return "avx512", flags, None
    if capability == "AVX2":
        return "avx2", ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"], None
    return None, [], f"the CPU lacks AVX2 (torch's CPU capability: {capability})"


# -fopenmp: at::parallel_for is an inline OpenMP region in the header (ATen/ParallelOpenMP.h);
# without it the gate passes run on one thread. libgomp.so.1 is the one torch already loaded.
_COMMON_FLAGS = ["-O3", "-DNDEBUG", "-fno-math-errno", "-fopenmp"]
_LDFLAGS = ["-fopenmp"]


def _sources() -> list[str]:
    return sorted(os.path.join(_CSRC, f) for f in os.listdir(_CSRC) if f.endswith((".cpp", ".h")))


def _key(isa: str, flags: list[str]) -> str:
    digest = hashlib.sha256()
    for path in _sources():
        digest.update(os.path.basename(path).encode() + b"\0")
        with open(path, "rb") as f:
            digest.update(f.read() + b"\0")
    digest.update(" ".join(flags + _COMMON_FLAGS + _LDFLAGS).encode())
    digest.update(str(torch._C._GLIBCXX_USE_CXX11_ABI).encode())
    version = torch.__version__.replace("+", "_")
    return f"torch{version}-{isa}-{digest.hexdigest()[:16]}"


def _notice(message: str, end: str = "\n") -> None:
    sys.stderr.write(message + end)
    sys.stderr.flush()


def _unavailable(reason: str, prefix: str = "") -> bool:
    _state["reason"] = reason
    head = prefix if prefix else "grutrain: "  # prefix: the rest of the "building ..." line
    _notice(f"{head}native GRU kernel unavailable ({reason}); using the Python fused path")
    return False


@contextlib.contextmanager
def _file_lock(path: str):
    """An exclusive fcntl.flock on `path` (held across processes; released if the holder dies)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def load(build: bool = True) -> bool:
    """Make the native kernel available in this process: load the built library from the cache,
    building it first (once per machine and key, under a file lock) when ``build``. Returns
    whether the kernel is available; never raises for a missing compiler or a failed build (one
    notice line on stderr instead, once per process)."""
    if _state["loaded"]:
        return True
    with _lock:
        if _state["loaded"]:
            return True
        if _state["reason"] is not None:  # failed before in this process: its notice was printed
            return False
        return _try_load(build)


def _try_load(build: bool) -> bool:
    if os.environ.get("GRUTRAIN_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        _state["reason"] = "disabled by GRUTRAIN_NATIVE=0"  # asked for: no notice
        return False
    isa, flags, why = _isa()
    if why is not None:
        return _unavailable(why)
    key = _key(isa, flags)
    directory = os.path.join(kernels_dir(), key)
    _state.update(key=key, path=directory)
    so = os.path.join(directory, _SO_NAME)
    if os.path.exists(os.path.join(directory, _BUILT_MARK)):  # the common case: no lock, no ninja
        return _load_library(so, directory)
    if not build:
        return False
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return _unavailable(f"no C++ compiler found: {cxx}; install g++ or set CXX")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        return _unavailable(f"cannot create the cache directory {directory}: {e.strerror}")
    with _file_lock(directory + ".lock"):
        if os.path.exists(os.path.join(directory, _BUILT_MARK)):  # another process built it meanwhile
            return _load_library(so, directory)
        failed = os.path.join(directory, _FAILED_MARK)
        if os.path.exists(failed):
            return _unavailable(f"an earlier build failed, see {os.path.join(directory, _BUILD_LOG)}; "
                                f"delete {directory} to retry")
        return _build(directory, flags, so)


def _build(directory: str, flags: list[str], so: str) -> bool:
    prefix = "grutrain: building the native GRU kernel (once, ~30 s) ..."
    _notice(prefix, end="")
    log_path = os.path.join(directory, _BUILD_LOG)
    start = time.perf_counter()
    try:
        from torch.utils import cpp_extension

        if not cpp_extension.is_ninja_available():
            raise RuntimeError("ninja not found")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cpp_extension.load(
                name=LIBRARY,
                sources=[p for p in _sources() if p.endswith(".cpp")],
                extra_cflags=flags + _COMMON_FLAGS,
                extra_ldflags=_LDFLAGS,
                extra_include_paths=[_CSRC],
                build_directory=directory,
                is_python_module=False,
                verbose=False,
            )
        seconds = time.perf_counter() - start
        with open(log_path, "a") as log:
            for w in caught:
                log.write(f"warning: {w.message}\n")
    except Exception as e:  # noqa: BLE001 -- any failure means "unavailable", never an exception
        message = str(e)
        with open(log_path, "a") as log:
            log.write(message + "\n")
        with open(os.path.join(directory, _FAILED_MARK), "w") as f:
            json.dump({"reason": message.splitlines()[0] if message else type(e).__name__,
                       "torch": torch.__version__, "time": time.time()}, f)
        short = message.splitlines()[0][:120] if message else type(e).__name__
        return _unavailable(f"build failed: {short}; log: {log_path}", prefix=" failed: ")
    _notice(f" built in {seconds:.1f} s")
    with open(os.path.join(directory, _BUILT_MARK), "w") as f:
        json.dump({"build_seconds": round(seconds, 2), "torch": torch.__version__, "time": time.time(),
                   "flags": flags + _COMMON_FLAGS}, f)
    _state["build_seconds"] = seconds
    return _finish_load()


def _load_library(so: str, directory: str) -> bool:
    try:
        torch.ops.load_library(so)
    except Exception as e:  # noqa: BLE001 -- a damaged or incompatible file: unavailable
        return _unavailable(f"cannot load {so}: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}")
    try:
        with open(os.path.join(directory, _BUILT_MARK)) as f:
            _state["build_seconds"] = json.load(f).get("build_seconds")
    except (OSError, ValueError):
        pass
    return _finish_load()


def _finish_load() -> bool:
    global _ops, _LAYER, _INFERENCE, _CELL, _STACK
    _ops = getattr(torch.ops, LIBRARY)
    _LAYER = _ops.gru_layer.default
    _INFERENCE = _ops.gru_layer_inference.default
    _CELL = _ops.gru_cell.default
    _STACK = _ops.gru_stack_step.default
    _state["loaded"], _state["reason"] = True, None
    return True


def available() -> bool:
    """Whether the kernel is loaded or can be loaded (built if needed) in this process."""
    return load()


def reason() -> str | None:
    """Why the kernel is unavailable in this process (None when it is loaded or was not tried)."""
    return _state["reason"]


def status() -> dict:
    """What a ``grutrain kernels`` command would show: key, cache path, built or not, loaded or not,
    why unavailable, build seconds. Builds nothing."""
    isa, flags, why = _isa()
    key = _state["key"] or (_key(isa, flags) if why is None else None)
    path = _state["path"] or (os.path.join(kernels_dir(), key) if key else None)
    built = bool(path) and os.path.exists(os.path.join(path, _BUILT_MARK))
    failed = bool(path) and os.path.exists(os.path.join(path, _FAILED_MARK))
    seconds = _state["build_seconds"]
    if seconds is None and built:
        try:
            with open(os.path.join(path, _BUILT_MARK)) as f:
                seconds = json.load(f).get("build_seconds")
        except (OSError, ValueError):
            pass
    return {
        "library": LIBRARY,
        "key": key,
        "isa": isa,
        "kernels_dir": kernels_dir(),
        "path": path,
        "built": built,
        "build_failed": failed,
        "loaded": _state["loaded"],
        "reason": _state["reason"] or why,
        "build_seconds": seconds,
        "torch": torch.__version__,
    }


def supports(x: Tensor) -> bool:
    """Whether native_gru_layer can run on tensors like x (a kernel for its device is registered
    and its dtype is one the kernel takes: float32/float64, or any under autocast). Loads the
    kernel (building it if needed)."""
    if not load():
        return False
    if not torch._C._dispatch_has_kernel_for_dispatch_key(f"{LIBRARY}::gru_layer", x.device.type.upper()):
        return False
    return x.dtype in (torch.float32, torch.float64) or _autocast_enabled(x.device.type)


# --------------------------------------------------------------------------------------------
# The layer and the cell
# --------------------------------------------------------------------------------------------

_LAYER = _INFERENCE = _CELL = _STACK = None


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        return torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()


def _autocast_dtype(device_type: str) -> torch.dtype:
    try:
        return torch.get_autocast_dtype(device_type)
    except AttributeError:  # torch < 2.4
        return torch.get_autocast_cpu_dtype() if device_type == "cpu" else torch.get_autocast_gpu_dtype()


def _require() -> None:
    if not load():
        raise RuntimeError(f"the native GRU kernel is unavailable ({_state['reason']}); check "
                           f"grutrain's native.available() before choosing this path")


def native_gru_layer(
    x: Tensor,
    h0: Tensor | None,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
    reset: str = "after",
) -> tuple[Tensor, Tensor]:
    """One direction of one GRU layer over a time-major sequence: ``fused_gru_layer``'s signature
    and semantics on the native kernel.

    Args:
        x: input, [T, B, I]. h0: [B, H] or None (zeros). weight_ih [3H, I], weight_hh [3H, H]
        (rows r, z, n, torch.nn.GRU's layout); bias_ih, bias_hh [3H] or None.
        reset: "after" (torch.nn.GRU) or "before" (n = tanh(x W_in^T + b_in + (r*h) W_hn^T + b_hn)).

    Returns:
        (output [T, B, H], h_T [B, H]). Changing the output in place before backward makes
        backward raise (it is what backward reads the states from).

    Under torch.autocast the inputs are cast to float32 (recorded, so low-precision leaves get
    gradients) and, under a bfloat16 autocast, the matrix products take bfloat16 operands with
    float32 accumulation; state and gate arithmetic stay float32 (the gate values kept for backward
    are stored in bfloat16); outputs get torch.nn.GRU's dtype. A double
    backward (create_graph=True) recomputes the layer with the reference equations.
    Raises RuntimeError when the kernel is unavailable (check ``available()``/``supports(x)``).
    """
    if reset not in RESETS:
        raise ValueError(f"reset must be 'after' or 'before', got {reset!r}")
    if x.dim() != 3:
        raise ValueError(f"x must be [T, B, I], got shape {tuple(x.shape)}")
    T, B, _ = x.shape
    H = weight_hh.shape[1]
    if T == 0:
        raise ValueError("x must have at least one time step")
    if _LAYER is None:
        _require()
    if h0 is None:
        h0 = x.new_zeros((B, H))
    device_type = x.device.type
    if _autocast_enabled(device_type):
        amp_dtype = _autocast_dtype(device_type)
        out_dtype = amp_dtype if device_type == "cuda" else x.dtype  # torch.nn.GRU's, as fused_gru_layer
        matmul_dtype = amp_dtype if amp_dtype == torch.bfloat16 else None

        def f32(t):
            return t if t is None or t.dtype == torch.float32 else t.float()

        x, h0, weight_ih, weight_hh, bias_ih, bias_hh = map(f32, (x, h0, weight_ih, weight_hh, bias_ih, bias_hh))
        with torch.autocast(device_type, enabled=False):
            out, h_n = _run(x, h0, weight_ih, weight_hh, bias_ih, bias_hh, reset, matmul_dtype)
            return out.to(out_dtype), h_n.to(out_dtype)
    return _run(x, h0, weight_ih, weight_hh, bias_ih, bias_hh, reset, None)


def _run(x, h0, w_ih, w_hh, b_ih, b_hh, reset, matmul_dtype):
    if torch.is_grad_enabled() and (
        x.requires_grad or h0.requires_grad or w_ih.requires_grad or w_hh.requires_grad
        or (b_ih is not None and b_ih.requires_grad) or (b_hh is not None and b_hh.requires_grad)
    ):
        out, h_n, _ = _LAYER(x, h0, w_ih, w_hh, b_ih, b_hh, reset, matmul_dtype)
        return out, h_n
    return _INFERENCE(x, h0, w_ih, w_hh, b_ih, b_hh, reset, matmul_dtype)


def native_gru_cell(
    x_t: Tensor,
    h: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
    reset: str = "after",
) -> Tensor:
    """One GRU step without autograd (generation): x_t [B, I], h [B, H] -> h' [B, H] (a new
    tensor), float32 or float64; under autocast it runs in float32 and returns h's dtype.
    Raises RuntimeError when called with grad enabled on tensors that require grad."""
    if _CELL is None:
        _require()
    if torch.is_grad_enabled() and (h.requires_grad or weight_hh.requires_grad or x_t.requires_grad):
        raise RuntimeError("native_gru_cell has no backward: call it under torch.no_grad() "
                           "(use native_gru_layer for training)")
    if x_t.dtype != weight_ih.dtype:  # e.g. a bfloat16 activation from an autocast region
        x_t = x_t.to(weight_ih.dtype)
    if h.dtype != weight_hh.dtype:
        return _CELL(x_t, h.to(weight_hh.dtype), weight_ih, weight_hh, bias_ih, bias_hh, reset).to(h.dtype)
    return _CELL(x_t, h, weight_ih, weight_hh, bias_ih, bias_hh, reset)


def stack_step_supported(h: Tensor) -> bool:
    """Whether native_stack_step runs on a state like h here: the kernel is loaded with a kernel
    for h's device, h is float32/float64, no autocast and no autograd recording."""
    if _STACK is None and not load():
        return False
    return (h.device.type == "cpu" and h.dtype in (torch.float32, torch.float64)
            and not torch.is_grad_enabled() and not _autocast_enabled("cpu"))


def native_stack_step(x: Tensor, h: Tensor, weights: list, embedding: Tensor | None = None,
                      head_weight: Tensor | None = None, head_bias: Tensor | None = None,
                      reset: str = "after") -> tuple[Tensor, Tensor]:
    """Generation's whole step for a unidirectional GRU stack in one native call, no grad:
    x int64 ids [B] with ``embedding`` [V, E] (else features [B, I]), h [L, B, H], ``weights`` the
    flat list w_ih, w_hh, b_ih, b_hh of each layer (biases may be None) -> (head_weight h' +
    head_bias [B, O], or the last layer's h' [B, H] without a head; h_n [L, B, H], new tensors).
    The products are dot products in a different order than the GEMMs of the layer: equal to
    it to float rounding. Check ``stack_step_supported(h)`` first."""
    return _STACK(x, h, weights, embedding, head_weight, head_bias, reset)
