"""DP1 of Kim et al. (ICML 2023), exactly as the original code computes it (spec §2.4).

T_opt(i, j) = min(T(i, j), min_k T_opt(i, k) + T(k, j)) over k with (i, k) and (k, j) valid; a
split must be *strictly* faster (direct block wins ties, then the smallest k). The split points
are listed with both ends (``splits``; the original's ``breaks``); stdev_opt is the sum of the
pieces' stdevs.
"""

from __future__ import annotations

from collections.abc import Mapping

from depthfx.blocks import Block


def optimal_times(
    blocks: Mapping[Block, tuple[float, float]],
) -> dict[Block, tuple[float, float, tuple[int, ...]]]:
    """DP1 on one chain: ``{(st, end): (time, stdev)}`` → ``{(st, end): (T_opt, stdev_opt,
    splits)}``. Only splits whose prefix (i, k) is itself a valid block are considered."""
    out: dict[Block, tuple[float, float, tuple[int, ...]]] = {}
    for st, end in sorted(blocks):
        best, stdev = blocks[st, end]
        brk: tuple[int, ...] = (st, end)
        for k in range(st + 1, end):
            if (st, k) in out and (k, end) in blocks:
                t_k, s_k = blocks[k, end]
                prefix = out[st, k]
                if prefix[0] + t_k < best:
                    best, stdev, brk = prefix[0] + t_k, prefix[1] + s_k, (*prefix[2], end)
        out[st, end] = (best, stdev, brk)
    return out
