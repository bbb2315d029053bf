"""DP3 of Kim et al. (ICML 2023), exactly as the original code computes it (spec §3.5).

I_ext(st, end, sa, ea) = max(h(st, end, sa, ea), max_j I_ext(st, j, sa, 0) + h(j, end, 0, ea));
strictly greater wins (direct entry, then the smallest j). The split points are listed with
both ends (``splits``; the original's ``breaks``).
"""

from __future__ import annotations

from collections.abc import Mapping

from depthfx.blocks import ExtendedBlock


def extend_importance(
    h: Mapping[ExtendedBlock, float],
) -> dict[ExtendedBlock, tuple[float, tuple[int, ...]]]:
    """DP3 on one chain: normalised ``{(st, end, sa, ea): h}`` → ``{key: (I_ext, splits)}``."""
    out: dict[ExtendedBlock, tuple[float, tuple[int, ...]]] = {}
    for key in sorted(h, key=lambda k: (k[0], k[1], -k[2], -k[3])):
        st, end, sa, ea = key
        best, brk = h[key], (st, end)
        for j in range(st + 1, end):
            prefix = out.get((st, j, sa, 0))
            if prefix is not None and (j, end, 0, ea) in h:
                cand = prefix[0] + h[j, end, 0, ea]
                if cand > best:
                    best, brk = cand, (*prefix[1], end)
        out[key] = (best, brk)
    return out
