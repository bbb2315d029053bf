"""The merge-pattern DP of spec §4.5: the fastest merge boundaries S ⊇ A on the raw latency
table, for a given set A of kept activations.

DP2 prices blocks by T_opt, whose DP1 splits only where every prefix is a valid block; this 1-D
DP over the raw T finds the fastest S for the chosen A. :func:`depthfx.solver.solve`
cross-checks its S against it, and plans deploy this S.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from depthfx.errors import TableError
from depthfx.solver.latency_table import LatencyTable


@dataclass(frozen=True)
class MergePattern:
    """Fastest S ⊇ A on the raw T table (spec §4.5): positions (0 excluded), Σ T, Σ stdev."""

    merge_pos: list[int]
    time: float
    stdev: float


def optimal_merge_pattern(
    act_pos: Iterable[int], latency: LatencyTable, chain: int = 0
) -> MergePattern:
    """1-D DP over the raw latency table: D[m] = min_t D[t] + T(t, m) for t in
    [max(A ∪ {0} below m), m) with (t, m) valid, so no block crosses a kept activation; ties
    keep the smallest t."""
    if chain not in latency.lengths:
        raise TableError(f"{latency.source}: no chain {chain} in the latency table")
    length = latency.lengths[chain]
    starts = {0, *act_pos}
    best: list[float] = [0.0] + [math.inf] * length
    arg = [0] * (length + 1)
    for m in range(1, length + 1):
        t_max = max(x for x in starts if x < m)
        for t in range(t_max, m):
            g = latency.times.get((chain, t, m))
            if g is not None and best[t] + g < best[m]:
                best[m], arg[m] = best[t] + g, t
    if math.isinf(best[length]):
        raise TableError(
            f"{latency.source}: chain {chain}: no valid blocks realise activations "
            f"{sorted(set(act_pos))}"
        )
    pos, m = set(), length
    while m > 0:
        pos.add(m)
        m = arg[m]
    stdev, st = 0.0, 0
    for p in sorted(pos):
        stdev += latency.stdevs[chain, st, p]
        st = p
    return MergePattern(sorted(pos), best[length], stdev)
