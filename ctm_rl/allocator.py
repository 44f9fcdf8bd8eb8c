"""The C allocator: settings for the training and benchmark commands, and handing freed memory back.

With glibc's defaults, a freed block larger than the mmap threshold, and free memory at the top of the heap
beyond the trim threshold, go back to the OS, and the next allocation of that size faults its pages in
again. A CTM rollout step allocates and frees trace-sized tensors every env step, so the training and
benchmark commands keep freed memory in the process instead (``docs/performance.md`` has the measured
difference). Peak memory is unchanged; the process keeps what it has freed instead of returning it.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (the functions below are glibc's), else ``None``."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds so that freed memory is reused instead of returned to the OS.

    A no-op where the C library is not glibc, or where the user set any ``MALLOC_*`` variable (their choice
    wins).

    :return: whether the thresholds were set.
    """
    libc = _glibc()
    if libc is None or any(name.startswith("MALLOC_") for name in os.environ):
        return False
    # Older glibc caps the mmap threshold at 32 MiB; anything above a trace-sized tensor does here.
    mmap_set = libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30) == 1 or libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20) == 1
    return mmap_set and libc.mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1) == 1


def release_freed_memory() -> None:
    """Hand the memory the allocator holds free back to the OS now (glibc; elsewhere a no-op)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
