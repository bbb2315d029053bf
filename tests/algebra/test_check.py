"""check_close: passes on round-off, raises MergeMismatch with the numbers otherwise."""

from __future__ import annotations

import pytest
import torch

from depthfx import MergeMismatch
from depthfx.algebra import check_close


def test_round_off_passes() -> None:
    reference = torch.randn(2, 3, 4, 4, dtype=torch.float64) * 100
    check_close(reference, reference.float(), group="convs 3..5", rtol=1e-6, atol=0.0)


def test_mismatch_names_group_and_errors() -> None:
    reference = torch.zeros(1, 2, 3, 3)
    reference[0, 0, 0, 0] = 2.0
    merged = reference.clone()
    merged[0, 1, 2, 2] = 0.5
    with pytest.raises(MergeMismatch, match=r"convs 3\.\.5.*max \|Δ\| = 0\.5.* = 0\.25"):
        check_close(reference, merged, group="convs 3..5", rtol=1e-4, atol=1e-5)


def test_nan_and_shape_mismatch_raise() -> None:
    reference = torch.ones(2, 2)
    with pytest.raises(MergeMismatch, match="max"):
        check_close(reference, torch.full((2, 2), float("nan")), group="g")
    with pytest.raises(MergeMismatch, match="shape"):
        check_close(reference, torch.ones(2, 3), group="g")
