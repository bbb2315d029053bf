"""``reused_heap``: large tensors reuse mapped pages inside it (far fewer page faults), the
same values come out, and outside it glibc maps them afresh again."""

from __future__ import annotations

import platform
import resource

import pytest
import torch

from depthfx.measure.importance.heap import reused_heap

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)


def faults_and_sum() -> tuple[int, float]:
    """Minor page faults of making, writing and freeing ten 64 MiB tensors, and their sum."""
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    total = 0.0
    for i in range(10):
        t = torch.full((16 * 1024 * 1024,), float(i))
        total += float(t[::4096].sum())
        del t
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start, total


def test_large_tensors_reuse_pages_inside_only() -> None:
    outside, expected = faults_and_sum()
    with reused_heap():
        faults_and_sum()  # the first tensor maps the heap's pages once
        inside, total = faults_and_sum()
    after, _ = faults_and_sum()
    assert total == expected
    assert outside >= 100  # a fresh mmap per tensor: a fault per page (4 KiB or huge)
    assert inside < outside / 10
    assert after > outside / 2
