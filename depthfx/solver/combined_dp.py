"""The combined DP (spec §7.19): one DP whose rows are ICML'23's DP blocks ∪ LayerMerge's
variants, so its optimum is never below either method's on the same tables.

LayerMerge cannot keep two convs unmerged without an activation between them (ICML'23's
S ⊋ A), and ICML'23 cannot prune a conv to shrink a merged kernel; each has solutions the other
lacks. State (t, m, a) as in ICML'23's DP2: best Σ importance of a prefix ending at block end m
with activation flag a and integer cost ≤ t; base D(t, 0, 1) = 0 for t = 0 … T−1. Rows:

* ICML'23 extended block (i, m, j, a): from (i, j) to (m, a), cost ⌊prec·T_opt(i, m)⌋ (with
  DP1's split points, an activation-free split), value I_ext(i, m, j, a);
* LayerMerge variant v of block (st, end): from (st, j) for either j to (end, e), cost
  ⌊prec·T_v⌋, value I_v; e = 1 unless (st, end) is in ``linear`` (a length-1 block left
  linear, spec §1.3). Its value was measured in isolation, like a LayerMerge row.

Every ICML'23 path and every LayerMerge path is a path here with the same value and cost, so at
equal budget and ``prec`` the optimum is ≥ both (tested). Candidates: ICML'23 rows, then
LayerMerge rows; ties as in both DPs (round-7 value, then smaller integer cost, then the first).
"""

from __future__ import annotations

import math
from collections.abc import Container
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from depthfx.errors import InfeasibleBudget, TableError
from depthfx.solver.budget_dp import round7
from depthfx.solver.importance_table import ExtendedImportanceTable
from depthfx.solver.latency_table import OptimalLatencyTable
from depthfx.solver.layermerge_tables import LayerMergeTable, Variant


class Piece(NamedTuple):
    """One chosen row: block (st, end) with flags, and the LayerMerge variant (None: ICML'23)."""

    st: int
    end: int
    st_act: int
    end_act: int
    g: int
    h: float
    time: float
    splits: tuple[int, ...]
    variant: Variant | None


@dataclass(frozen=True)
class CombinedSolution:
    """Result of :func:`solve_combined` for one chain: A, S, the pruned convs and the pieces."""

    act_pos: list[int]
    merge_pos: list[int]
    pruned: list[int]
    pieces: list[Piece]
    objective: float
    time_units: int
    time: float
    budget: float
    prec: float
    budget_units: int


def _pieces(
    opt: OptimalLatencyTable,
    ext: ExtendedImportanceTable,
    lm: LayerMergeTable,
    chain: int,
    prec: float,
    linear: Container[tuple[int, int]],
) -> tuple[int, list[list[list[Piece]]]]:
    """Per (m, a), the candidate rows in scan order (ICML'23, then LayerMerge)."""
    length = opt.lengths.get(chain)
    if length is None or ext.lengths.get(chain) != length or lm.length > length:
        raise TableError(
            f"chain {chain}: the tables disagree on its length (latency {length}, importance "
            f"{ext.lengths.get(chain)}, LayerMerge up to {lm.length})"
        )
    cands: list[list[list[Piece]]] = [[[], []] for _ in range(length + 1)]
    for (c, i, m, j, a), h in ext.values.items():
        if c == chain:
            t = opt.times[c, i, m]
            cands[m][a].append(Piece(i, m, j, a, int(t * prec), h, t, opt.splits[c, i, m], None))
    for v in lm.variants:
        e = 0 if (v.st, v.end) in linear else 1
        for j in (0, 1):
            g = int(v.time * prec)
            cands[v.end][e].append(Piece(v.st, v.end, j, e, g, v.importance, v.time, (), v))
    return length, cands


def _forward(cands: list[list[list[Piece]]], T: int) -> list[list[tuple[np.ndarray, ...] | None]]:
    """D, C and back-pointers (candidate index) per (m, a) for t = 0 … T."""
    n = T + 1
    base = np.full(n, -np.inf)
    base[:T] = 0.0
    states: list[list[tuple[np.ndarray, ...] | None]] = [[None, None] for _ in cands]
    states[0][1] = (base, np.zeros(n, dtype=np.int64), np.full(n, -1, dtype=np.int32))
    for m in range(1, len(cands)):
        for a in (0, 1):
            best, rbest = np.full(n, -np.inf), np.full(n, -np.inf)
            bcost, bptr = np.zeros(n, dtype=np.int64), np.full(n, -1, dtype=np.int32)
            for k, p in enumerate(cands[m][a]):
                prev = states[p.st][p.st_act]
                if prev is None or p.g > T:
                    continue
                cv = prev[0][: n - p.g] + p.h
                cc = prev[1][: n - p.g] + p.g
                rc, rb = round7(cv), rbest[p.g :]
                take = ((rc > rb) | ((rc == rb) & (cc < bcost[p.g :]))) & (cv > -np.inf)
                np.copyto(best[p.g :], cv, where=take)
                np.copyto(rb, rc, where=take)
                np.copyto(bcost[p.g :], cc, where=take)
                bptr[p.g :][take] = k
            if (bptr >= 0).any():
                states[m][a] = (best, bcost, bptr)
    return states


def solve_combined(
    latency: OptimalLatencyTable,
    importance: ExtendedImportanceTable,
    layermerge: LayerMergeTable,
    budget: float,
    prec: float = 20,
    *,
    chain: int = 0,
    linear: Container[tuple[int, int]] = (),
) -> CombinedSolution:
    """Maximise Σ importance under Σ⌊prec·T⌋ ≤ int(prec·budget) over both methods' rows.

    ``latency``/``importance``: ICML'23's T_opt and I_ext (chain ``chain`` is used);
    ``layermerge``: that chain's variants, on the same importance scale and timing setting.
    Raises :class:`depthfx.InfeasibleBudget` (with the smallest feasible budget) when nothing
    fits.
    """
    if not (math.isfinite(budget) and math.isfinite(prec) and prec > 0):
        raise ValueError(f"budget and prec must be finite and prec > 0 (got {budget}, {prec})")
    length, cands = _pieces(latency, importance, layermerge, chain, prec, linear)
    units = int(budget * prec)
    most = sum(max((p.g for rows in at_m for p in rows), default=0) for at_m in cands[1:])
    T = min(units, most + 1)
    states = _forward(cands, T) if T >= 1 else None
    finals = [
        -math.inf if states is None or s is None else float(s[0][T]) for s in states[length]
    ] if states is not None else [-math.inf, -math.inf]  # fmt: skip
    if finals == [-math.inf, -math.inf]:
        need = _min_feasible(cands, length, most, prec)
        raise InfeasibleBudget(budget, need, latency.unit)
    a = int(np.argmax(finals))  # a = 0 wins an exact tie, like DP2's final argmax
    assert states is not None
    t, m, chosen = T, length, []
    while m > 0:
        state = states[m][a]
        assert state is not None
        p = cands[m][a][int(state[2][t])]
        chosen.append(p)
        t, m, a = t - p.g, p.st, p.st_act
    assert a == 1 and t < T
    chosen.reverse()
    objective, time_units, time = 0.0, 0, 0.0
    acts, merge, pruned = set(), set(), set()
    for p in chosen:
        objective, time_units, time = objective + p.h, time_units + p.g, time + p.time
        merge.update(p.splits or (p.st, p.end))
        if p.end_act:
            acts.add(p.end)
        if p.variant is not None:
            pruned.update(q for q in range(p.st + 1, p.end + 1) if q not in p.variant.kept)
    merge.discard(0)
    assert objective == finals[int(np.argmax(finals))] and time_units <= units
    return CombinedSolution(
        sorted(acts), sorted(merge), sorted(pruned), chosen, objective, time_units, time,
        budget, prec, units,
    )  # fmt: skip


def _min_feasible(cands: list[list[list[Piece]]], length: int, most: int, prec: float) -> float:
    """Smallest budget (in the table's unit) whose DP reaches the chain end: feasibility is
    monotone in T (D(T, L) exists iff some path costs 1 … T), so bisect on T."""

    def reaches(T: int) -> bool:
        return any(s is not None and s[0][T] > -np.inf for s in _forward(cands, T)[length])

    lo, hi = 1, most + 1
    if not reaches(hi):
        raise TableError("no tiling of the chain into table rows")
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if reaches(mid) else (mid + 1, hi)
    x = lo / prec
    while int(x * prec) < lo:
        x = math.nextafter(x, math.inf)
    return x


__all__ = ["CombinedSolution", "Piece", "solve_combined"]
