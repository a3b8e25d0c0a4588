"""Keep freed memory in the process (glibc's malloc), so that each training step's tensors reuse the
pages of the step before instead of faulting in fresh ones.

PyTorch's CPU tensors come straight from malloc. By default glibc serves large blocks with their own
mmap and returns freed memory at the top of the heap to the system, so the next step's buffers are new
pages, each costing a page fault and zeroing when first written: about 2,000 faults per
`configs/charlm.yaml` step here. Raising the mmap threshold to its maximum (32 MiB) and the trim
threshold to 1 GiB keeps those blocks in the heap for reuse (~100,000 fewer faults in 300 steps,
5-10% more tokens/s; docs/performance.md). This is what PyTorch's Xeon launcher gets by preloading
jemalloc or tcmalloc. The process's resident memory then stays near its high-water mark, which a
training process reaches on its first steps anyway.

Standard library only (no torch import): `grutrain.cli.main` calls it before any command runs.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's maximum on 64-bit systems
TRIM_THRESHOLD = 1 << 30
# A user's own malloc settings win (environment variables read by glibc at start-up).
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (see the module docstring). Returns whether they were
    set: not on other C libraries (no mallopt), nor when the user set malloc's own variables or
    GRUTRAIN_MALLOC=default."""
    if not sys.platform.startswith("linux") or os.environ.get("GRUTRAIN_MALLOC", "").lower() == "default":
        return False
    if any(os.environ.get(name) for name in USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # musl and others: their malloc, their rules
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
