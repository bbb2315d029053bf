"""A heap that keeps its pages while many large tensors are made and freed (glibc only).

Why: glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh
``mmap`` and returns it on ``free``, so each such tensor costs a page fault per 4 KiB page when
it is first written. The BN-re-estimated proxy makes and frees thousands of activations of
that size (MobileNetV2 at 224×224: 16 images × 96 × 112 × 112 floats = 77 MB): measured there,
the page faults were a third of its CPU time and a BN or depthwise conv ran 4–6× slower than
on reused pages. Inside :func:`reused_heap` nothing is mmapped and freed memory stays in the
heap, so later tensors reuse pages already mapped. It changes where memory comes from, not a
single computed value.

On exit the limits are set to what glibc's dynamic threshold grows to under such a workload
(mmap above 32 MiB, trim above 64 MiB) and the heap's free top is returned to the system.
Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

#: mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
#: glibc's largest dynamic mmap threshold on 64-bit systems, and its matching trim threshold.
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
#: mallopt's value is a C int.
_INT_MAX = 2**31 - 1


@contextmanager
def reused_heap() -> Iterator[None]:
    """Within the block large allocations come from the heap and freed pages stay mapped
    (module docstring); the limits are restored afterwards."""
    libc = _glibc()
    if libc is None:
        yield
        return
    libc.mallopt(_M_MMAP_MAX, 0)
    libc.mallopt(_M_TRIM_THRESHOLD, _INT_MAX)
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_MAX, 65536)
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
        libc.mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD_MAX)
        libc.malloc_trim(0)


@cache
def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


__all__ = ["reused_heap"]
