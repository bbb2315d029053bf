"""The single-stage DP of LayerMerge (Kim et al., ICML 2024), exactly as the original
``optimal_patterns`` computes it (spec §4).

Maximise Σ_k I(b_{k−1}, b_k, v_k) subject to Σ_k ⌊prec·T(b_{k−1}, b_k, v_k)⌋ ≤ T =
int(prec·T0) over tilings 0 = b_0 < … < b_K = L of the chain into table blocks, one variant v_k
per block. D(t, end) is the best value of a tiling of [0, end] with integer cost ≤ t:

* base D(t, 0) = 0 for t = 0 … T−1 (not T, as in the original: a tiling of total cost 0 never
  reaches D(T, L));
* D(t, end) = best over st = 0 … end−1 ascending, then the block's variants in latency-file
  order, of D(t − g, st) + h; a candidate replaces the incumbent iff ``round(cand, 7) >
  round(best, 7)`` (Python's ``round``, reproduced exactly), or the two are equal and the
  candidate's accumulated integer cost is strictly smaller;
* the answer follows the back-pointers from (T, L). Values are added from the first block
  forward, so the recomputed objective equals D(T, L) bit for bit (asserted).

Vectorised over t with NumPy; back-pointers replace the original's per-state children dicts.
Differences from the original, on purpose: it calls ``exit()`` when some end has t_min(end) > T
even if a feasible tiling skips that end, and when D(T, L) does not exist. Here only a missing
D(T, L) is an error, :class:`depthfx.InfeasibleBudget`, carrying the smallest T0 that has a
solution. A budget above the most expensive tiling is clamped to that cost + 1 units (which
changes nothing: every state then admits every prefix), so it does not allocate huge arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from depthfx.errors import InfeasibleBudget, TableError
from depthfx.solver.budget_dp import min_budget, round7
from depthfx.solver.layermerge_tables import LayerMergeTable, Variant

#: The original's default discretisation: 10 units per ms.
LAYERMERGE_PREC = 10


class Child(NamedTuple):
    """One entry of the original's ``children_dict``: the row name and its kept subset."""

    variant: str
    kept: tuple[int, ...]


@dataclass(frozen=True)
class LayerMergeSolution:
    """Result of :func:`solve_layermerge` (the original's checkpoint, 0 excluded).

    ``act_ind`` are the DP block ends (activations kept, also the merge boundaries),
    ``conv_ind`` the kept chain convs, ``children`` maps each block end to the chosen variant,
    ``blocks`` lists the chosen variants in position order. ``objective`` = Σ importance,
    ``time_units`` = Σ int(prec·time) ≤ ``budget_units``, ``time`` = Σ time (the original's
    ``imp_sum``, ``int_time_sum``, ``flt_time_sum``).
    """

    act_ind: list[int]
    conv_ind: list[int]
    children: dict[int, Child]
    blocks: list[Variant]
    objective: float
    time_units: int
    time: float
    budget: float
    prec: float
    budget_units: int
    length: int

    @property
    def pruned(self) -> list[int]:
        """Chain convs 1 … L replaced by the identity."""
        kept = set(self.conv_ind)
        return [p for p in range(1, self.length + 1) if p not in kept]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; ``children`` keyed by the end position as a string."""
        return {
            "method": "layermerge",
            "act_ind": self.act_ind,
            "conv_ind": self.conv_ind,
            "pruned": self.pruned,
            "children": {
                str(end): {"variant": c.variant, "kept": list(c.kept)}
                for end, c in self.children.items()
            },
            "objective": self.objective,
            "time_units": self.time_units,
            "time": self.time,
            "budget": self.budget,
            "prec": self.prec,
            "budget_units": self.budget_units,
        }


class _Cand(NamedTuple):
    st: int
    g: int
    h: float
    variant: Variant


def _candidates(table: LayerMergeTable, length: int, prec: float) -> list[list[_Cand]]:
    """Per end, the (st, g, h, variant) candidates in the original's scan order."""
    if length < 1:
        raise TableError(f"{table.source}: the chain length must be >= 1 (got {length})")
    beyond = [v for v in table.variants if v.end > length]
    if beyond:
        v = beyond[0]
        raise TableError(
            f"{table.source}: block (st={v.st}, end={v.end}) ends beyond the chain length "
            f"L={length}"
        )
    cands: list[list[_Cand]] = [[] for _ in range(length + 1)]
    for end in range(1, length + 1):
        for v in table.by_end.get(end, []):
            cands[end].append(_Cand(v.st, int(v.time * prec), v.importance, v))
    return cands


def _cost_bounds(cands: list[list[_Cand]], source: str) -> tuple[float, float]:
    """(smallest positive, largest) integer cost of a tiling of the whole chain.

    D(T, L) exists iff some tiling costs between 1 and T (the base stops at T−1), so T is
    feasible iff T ≥ the smallest positive cost. Tracked per end: min, min ≥ 1, max.
    """
    length = len(cands) - 1
    state: dict[int, tuple[float, float, float]] = {0: (0.0, math.inf, 0.0)}
    for end in range(1, length + 1):
        lo = pos = math.inf
        hi = -math.inf
        for c in cands[end]:
            if c.st in state:
                p_lo, p_pos, p_hi = state[c.st]
                lo, hi = min(lo, p_lo + c.g), max(hi, p_hi + c.g)
                pos = min(pos, p_lo + c.g if p_lo + c.g >= 1 else p_pos + c.g)
        if lo < math.inf:
            state[end] = (lo, pos, hi)
    if length not in state:
        reached = max(state)
        raise TableError(
            f"{source}: no tiling of positions 0..{length} into table blocks: nothing reaches "
            f"past position {reached}"
        )
    return state[length][1], state[length][2]


def _forward(
    cands: list[list[_Cand]], T: int
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """D, C and back-pointers (candidate index, −1 where no state) for t = 0 … T, per end."""
    n = T + 1
    val = np.full(n, -np.inf)
    val[:T] = 0.0
    vals, costs = [val], [np.zeros(n, dtype=np.int64)]
    ptrs = [np.full(n, -1, dtype=np.int32)]
    for end in range(1, len(cands)):
        best = np.full(n, -np.inf)
        rbest = np.full(n, -np.inf)
        bcost = np.zeros(n, dtype=np.int64)
        bptr = np.full(n, -1, dtype=np.int32)
        for k, c in enumerate(cands[end]):
            if c.g > T:
                continue
            prev = vals[c.st][: n - c.g]
            cv = prev + c.h
            cc = costs[c.st][: n - c.g] + c.g
            rc = round7(cv)
            rb = rbest[c.g :]
            take = ((rc > rb) | ((rc == rb) & (cc < bcost[c.g :]))) & (prev > -np.inf)
            np.copyto(best[c.g :], cv, where=take)
            np.copyto(rb, rc, where=take)
            np.copyto(bcost[c.g :], cc, where=take)
            bptr[c.g :][take] = k
        vals.append(best)
        costs.append(bcost)
        ptrs.append(bptr)
    return vals, costs, ptrs


def solve_layermerge(
    table: LayerMergeTable,
    budget: float,
    prec: float = LAYERMERGE_PREC,
    *,
    length: int | None = None,
) -> LayerMergeSolution:
    """Maximise Σ importance under Σ int(prec·time) ≤ int(prec·budget) (spec §4).

    ``budget`` (T0) is in the table's unit (ms); ``length`` is L (the original's ``act_num``),
    by default the table's largest block end. Raises :class:`depthfx.InfeasibleBudget` with the
    smallest feasible budget when no tiling fits, :class:`depthfx.TableError` when the table
    cannot tile the chain at all.
    """
    if not (math.isfinite(budget) and math.isfinite(prec) and prec > 0):
        raise ValueError(f"budget and prec must be finite and prec > 0 (got {budget}, {prec})")
    L = table.length if length is None else length
    cands = _candidates(table, L, prec)
    need, most = _cost_bounds(cands, table.source)
    if math.isinf(need):
        raise TableError(
            f"{table.source}: every tiling costs 0 units at prec={prec:g}, which the DP's base "
            "case never admits; raise prec"
        )
    units = int(budget * prec)
    T = min(units, int(most) + 1)
    if T < 1 or units < need:
        raise InfeasibleBudget(budget, min_budget(need, prec), table.unit)
    vals, costs, ptrs = _forward(cands, T)
    value = float(vals[L][T])
    assert value > -math.inf, "no state D(T, L) although a tiling fits"

    t, end, chosen = T, L, []
    while end > 0:
        c = cands[end][int(ptrs[end][t])]
        chosen.append(c.variant)
        t, end = t - c.g, c.st
    assert vals[0][t] == 0.0 and t < T
    chosen.reverse()

    objective, time_units, time = 0.0, 0, 0.0
    kept: set[int] = set()
    for v in chosen:
        objective += v.importance
        time_units += int(v.time * prec)
        time += v.time
        kept.update(v.kept)
    assert objective == value, f"recomputed objective {objective!r} != DP value {value!r}"
    assert time_units == int(costs[L][T]) and time_units <= units
    return LayerMergeSolution(
        act_ind=[v.end for v in chosen],
        conv_ind=sorted(kept),
        children={v.end: Child(v.childkey, v.kept) for v in chosen},
        blocks=chosen,
        objective=objective,
        time_units=time_units,
        time=time,
        budget=budget,
        prec=prec,
        budget_units=units,
        length=L,
    )
