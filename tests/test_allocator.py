"""grutrain keeps freed memory for reuse (glibc): large tensors come from the heap and stay there
after they are freed, instead of fresh pages (page faults) for every step's buffers."""

import subprocess
import sys

import pytest

# malloc and free a 20 MiB block in a fresh process; print how far the program break (the heap's
# end) moved when it was allocated and after it was freed. A block from mmap leaves it in place.
SCRIPT = """
import ctypes, sys
from grutrain import allocator
if sys.argv[1] == "keep":
    assert allocator.keep_freed_memory()
libc = ctypes.CDLL(None)
libc.sbrk.restype, libc.sbrk.argtypes = ctypes.c_void_p, [ctypes.c_ssize_t]
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
start = libc.sbrk(0)
block = libc.malloc(20 << 20)
ctypes.memset(block, 1, 20 << 20)
allocated = libc.sbrk(0)
libc.free(block)
print(allocated - start, libc.sbrk(0) - start)
"""

MIB = 1 << 20


def break_moves(mode: str) -> tuple[int, int]:
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=120,
                          check=True)
    grown, kept = done.stdout.split()
    return int(grown), int(kept)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_large_blocks_come_from_the_heap_and_stay_after_free():
    grown, kept = break_moves("default")
    assert grown < MIB and kept < MIB  # glibc's default: its own mmap, unmapped on free
    grown, kept = break_moves("keep")
    assert grown >= 20 * MIB and kept >= 20 * MIB  # in the heap, and still there to be reused


def test_user_malloc_settings_win(monkeypatch):
    from grutrain import allocator

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert not allocator.keep_freed_memory()
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setenv("GRUTRAIN_MALLOC", "default")
    assert not allocator.keep_freed_memory()
