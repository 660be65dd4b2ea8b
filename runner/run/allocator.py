"""A steady memory allocator for timed cells (glibc's malloc, where it is the allocator).

glibc serves allocations above its mmap threshold (128 KiB at first, then adapting to the
sizes freed) with fresh mmap'd pages, and returns the top of the heap to the system beyond
its trim threshold. A training step allocates and frees tensors of a few MB (a 1000x1000
float32 gradient is 4 MB), so until the thresholds have adapted to this process's pattern,
every step pays page faults on memory it just gave back. Measured with `bench` on this
project's machine: MC-APPROX at batch 1, depth 7 ran its first 1000 steps in a process with
a backward pass 4x slower than the same steps later (8.0 s against 2.0 s), which made its
ratio to STANDARD swing between 0.9x and 2x from one repeat to the next. Fixing both
thresholds (mallopt, which also turns the adaptation off) removes the warm-up: the first
run is as fast as the rest, in every process, whatever ran there before.

The cost is memory held rather than returned: chunks up to 32 MiB come from the heap, and up
to 256 MiB of free heap top is kept per process for the next step.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest accepted value on 64-bit systems
TRIM_THRESHOLD = 256 * 2**20

_applied: str | None = None


def steady_allocator() -> str:
    """Fix glibc's mmap and trim thresholds in this process (once; later calls are free).
    Returns what is in force, for the result row: e.g. "glibc mmap 32 MiB, trim 256 MiB",
    or "default" where the allocator is not glibc's or refuses."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def current() -> str:
    """What `steady_allocator` put in force in this process ("default" if nothing)."""
    return _applied or "default"


def _apply() -> str:
    if not sys.platform.startswith("linux"):
        return "default"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return "default"
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:
        return "default"
    if mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return f"glibc mmap {MMAP_THRESHOLD >> 20} MiB"
    return f"glibc mmap {MMAP_THRESHOLD >> 20} MiB, trim {TRIM_THRESHOLD >> 20} MiB"
