"""The fastest configuration the tables allow: ``budget="fastest"`` and the minimum budget.

DP2 (:func:`~depthfx.solver.solve`) compares configurations by Σ⌊prec·T_opt⌋, so near its
smallest feasible budget the floors let it pick a configuration that is up to L/prec slower
than the fastest one, and that smallest budget moves with ``prec``. Asking for "the fastest
plan" or "the smallest budget that works" needs the real sums instead:

    minimise Σ T_opt(b_{k−1}, b_k) over the same extended blocks and activation flags as DP2,
    then, among the configurations within a relative ``TIME_TOLERANCE`` of that minimum,
    maximise Σ I_ext (compared after rounding to 7 decimals, as DP2 does)

per chain (chains share nothing but the sum). Its time R is feasible for DP2 at *every* prec:
Σ⌊prec·T⌋ ≤ ⌊prec·ΣT⌋ ≤ int(prec·budget) for any budget ≥ R.

The LayerMerge and combined DPs take "fastest" as their smallest feasible budget instead
(:func:`at_smallest_budget`): their objective is taken in the units they are solved in.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

from depthfx.blocks import ExtendedBlock
from depthfx.errors import InfeasibleBudget, TableError
from depthfx.solver.budget_dp import (
    ChainCosts,
    Solution,
    chain_results,
    check_merge_pattern,
    index_chains,
)
from depthfx.solver.importance_table import ExtendedImportanceTable, ImportanceTable
from depthfx.solver.latency_table import LatencyTable, OptimalLatencyTable

S = TypeVar("S")

#: The budget that asks for this configuration (``depthfx.plan(budget=FASTEST)``, the CLI's
#: ``--budget fastest``).
FASTEST = "fastest"

#: Times within this relative distance count as equal (float sums of the same blocks in
#: another order differ by a few ulps); importance then decides.
TIME_TOLERANCE = 1e-9


def _fastest_blocks(ch: ChainCosts, source: str) -> list[ExtendedBlock]:
    """The fastest (then most important) DP blocks of one chain, in position order."""
    # best[m, a] = (time, round7(importance), importance, back-pointer (i, j))
    best: dict[tuple[int, int], tuple[float, float, float, tuple[int, int] | None]] = {
        (0, 1): (0.0, 0.0, 0.0, None)
    }
    for m in range(1, ch.length + 1):
        for a in (0, 1):
            incumbent = None
            for i, j, _, h in ch.cands[m][a]:
                prev = best.get((i, j))
                if prev is None:
                    continue
                time, value = prev[0] + ch.time[i, m], prev[2] + h
                cand = (time, round(value, 7), value, (i, j))
                if incumbent is None or _better(cand, incumbent):
                    incumbent = cand
            if incumbent is not None:
                best[m, a] = incumbent
    ends = [(a, best[ch.length, a]) for a in (0, 1) if (ch.length, a) in best]
    if not ends:
        raise TableError(
            f"{source}: chain {ch.chain}: the tables admit no configuration from position 0 "
            f"to {ch.length} (missing blocks or activation flags)"
        )
    a, state = ends[0]
    if len(ends) == 2 and _better(ends[1][1], state):
        a, state = ends[1]
    blocks: list[ExtendedBlock] = []
    m = ch.length
    while state[3] is not None:
        i, j = state[3]
        blocks.append((i, m, j, a))
        m, a, state = i, j, best[i, j]
    return blocks[::-1]


def _better(
    cand: tuple[float, float, float, object], best: tuple[float, float, float, object]
) -> bool:
    """Strictly faster beyond the tolerance, or as fast and more important."""
    slack = TIME_TOLERANCE * max(abs(best[0]), abs(cand[0]), 1e-300)
    if cand[0] < best[0] - slack:
        return True
    return abs(cand[0] - best[0]) <= slack and cand[1] > best[1]


def solve_fastest(
    latency: LatencyTable | OptimalLatencyTable,
    importance: ImportanceTable | ExtendedImportanceTable,
    prec: float = 20,
    *,
    warn: bool = True,
) -> Solution:
    """The fastest configuration (module doc); ``prec`` only sets the integer units reported.

    The returned :class:`Solution` has ``budget`` = its own time: passed back to
    :func:`~depthfx.solver.solve` as the budget it is feasible at any ``prec`` (as long as it
    costs at least one unit). With a raw latency table, ``fastest_merge_pos`` and
    ``merge_check`` are filled as by ``solve``.
    """
    if not (math.isfinite(prec) and prec > 0):
        raise ValueError(f"prec must be finite and > 0, got {prec}")
    raw = latency if isinstance(latency, LatencyTable) else None
    opt = latency.optimal() if isinstance(latency, LatencyTable) else latency
    ext = importance.extended() if isinstance(importance, ImportanceTable) else importance
    chains = index_chains(opt, ext, prec)
    per_chain = [_fastest_blocks(ch, opt.source) for ch in chains]
    results, objective, units, time = chain_results(chains, per_chain)
    solution = Solution(results, objective, units, time, time, prec, int(time * prec))
    return solution if raw is None else check_merge_pattern(solution, raw, warn=warn)


def at_smallest_budget(solve_at: Callable[[float], S]) -> tuple[float, S]:
    """(the smallest budget ``solve_at`` accepts, its solution there): for a DP whose base case
    never admits a zero budget and whose :class:`~depthfx.InfeasibleBudget` names the smallest
    feasible one (LayerMerge, combined); at it the DP keeps the best objective among the
    cheapest configurations."""
    try:
        solve_at(0.0)
    except InfeasibleBudget as err:
        return err.minimum, solve_at(err.minimum)
    raise AssertionError("the DP accepted a zero budget")
