"""Valid blocks, extended blocks and the residual rule of a chain (spec §2.1, §3.1, §5.1): the
combinatorics shared by the chain records, the solver and the plans.

A *block* (i, j) merges convs i+1 … j of a chain of L convs into one conv. It is valid iff it
straddles no forced break and does not partly overlap a residual body (s, t): it may contain
the whole body, lie inside it, or be disjoint from it. An *extended block* (i, j, a_i, a_j)
adds whether an activation is present at each end; an activation may be absent at a block
end only where the original network is linear (``optional`` positions).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

Block = tuple[int, int]
ExtendedBlock = tuple[int, int, int, int]


def is_valid_block(i: int, j: int, barriers: Iterable[int], residuals: Iterable[Block]) -> bool:
    """Spec §2.1 rule: no barrier strictly inside (i, j), no partial overlap with a residual."""
    if any(i < b < j for b in barriers):
        return False
    return not any(i < s < j < t or s < i < t < j for s, t in residuals)


def valid_blocks(
    num_convs: int, barriers: Iterable[int] = (), residuals: Iterable[Block] = ()
) -> list[Block]:
    """All valid blocks of a chain of ``num_convs`` convs, in lexicographic (st, end) order."""
    barriers = sorted(set(barriers))
    residuals = list(residuals)
    return [
        (i, j)
        for i in range(num_convs)
        for j in range(i + 1, num_convs + 1)
        if is_valid_block(i, j, barriers, residuals)
    ]


def extended_blocks(
    blocks: Iterable[Block],
    optional: Iterable[int],
    *,
    exclude_zeros: bool = True,
    pinned: Mapping[int, int] | None = None,
) -> list[ExtendedBlock]:
    """Extended blocks (st, end, st_act, end_act) in the original's order (spec §3.1).

    ``optional`` are the positions that are linear in the original network (the paper's
    ``blk_pos``): only there may a DP block end lack an activation. With ``exclude_zeros``
    (the paper's setting) a block never lacks activations at both ends. ``pinned`` forces the
    flag at some positions (a chain's true end keeps the original's activation). Position 0
    always carries flag 1. Within one (st, end) the flags come as (1,1), (1,0), (0,1), (0,0).
    """
    optional = set(optional)
    pinned = dict(pinned or {})

    def choices(p: int, free: bool) -> tuple[int, ...]:
        if p == 0:
            return (1,)
        if p in pinned:
            return (pinned[p],)
        return (1, 0) if free else (1,)

    out: list[ExtendedBlock] = []
    for st, end in blocks:
        st_free = st != 0 and st in optional and st not in pinned
        end_free = end in optional and (not exclude_zeros or (st != 0 and not st_free))
        out.extend(
            (st, end, a, b)
            for a in choices(st, st_free)
            for b in choices(end, end_free)
            if not (exclude_zeros and a == 0 and b == 0)
        )
    return out


def close_residuals(merge: Iterable[int], residuals: Iterable[tuple[int, int]]) -> set[int]:
    """S closed under the residual rule: a body (src, dst) cut anywhere strictly inside gets
    both ends as boundaries (the original's skip bumps, spec §5.1). Position 0 is dropped."""
    merge = set(merge) - {0}
    residuals = list(residuals)
    changed = True
    while changed:
        changed = False
        for src, dst in residuals:
            if any(src < p < dst for p in merge) and not {src, dst} <= merge | {0}:
                merge |= {src, dst} - {0}
                changed = True
    return merge
