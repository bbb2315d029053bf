"""Check a merged result against the reference it must reproduce.

Criterion: max |merged − reference| ≤ atol + rtol · max |reference|. Scaling by the largest
reference magnitude (rather than elementwise) keeps near-zero outputs from failing a merge whose
error is pure fp32 round-off, which grows with the map's magnitude and the merged kernel size
(spec §5.5: ≈1e-7 absolute on MobileNetV2, 2.3e-5 absolute / 1.5e-6 relative on VGG19).
"""

from __future__ import annotations

import torch
from torch import Tensor

from depthfx.errors import MergeMismatch


def check_close(
    reference: Tensor,
    merged: Tensor,
    *,
    group: str,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> None:
    """Raise MergeMismatch naming ``group`` and the errors if ``merged`` ≠ ``reference``."""
    if reference.shape != merged.shape:
        raise MergeMismatch(
            f"merged {group} produces shape {tuple(merged.shape)}, the reference "
            f"{tuple(reference.shape)}"
        )
    ref = reference.detach().to(torch.float64)
    diff = (merged.detach().to(torch.float64) - ref).abs()
    max_abs = diff.max().item() if diff.numel() else 0.0
    scale = ref.abs().max().item() if ref.numel() else 0.0
    if not max_abs <= atol + rtol * scale:  # also catches NaN
        raise MergeMismatch(
            f"merged {group} does not reproduce the reference: max |Δ| = {max_abs:.3g}, "
            f"max |Δ| / max |ref| = {max_abs / scale if scale else float('inf'):.3g} "
            f"(allowed {atol:g} + {rtol:g}·{scale:.3g})"
        )
