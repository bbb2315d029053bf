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
Without ICML'23 tables only LayerMerge rows are used (LayerMerge's DP, on several chains).
Several chains share one budget as in DP2: chain c+1's start (flag 1) is fed by chain c's end,
the flag chosen like the final argmax (a = 0 on exact ties).
"""

from __future__ import annotations

import math
from collections.abc import Container, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from depthfx.errors import InfeasibleBudget, TableError
from depthfx.solver.budget_dp import min_budget, round7
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
class CombinedChain:
    """One chain's part of a solution: A, S, the pruned convs (sorted, 0 excluded), pieces."""

    chain: int
    act_pos: list[int]
    merge_pos: list[int]
    pruned: list[int]
    pieces: list[Piece]


@dataclass(frozen=True)
class CombinedSolution:
    """Result of :func:`solve_combined`: per-chain parts and the totals over all chains."""

    chains: list[CombinedChain]
    objective: float
    time_units: int
    time: float
    budget: float
    prec: float
    budget_units: int


#: Per chain, per (m, a), the candidate rows in scan order.
Cands = list[list[list[Piece]]]
_State = tuple[np.ndarray, np.ndarray, np.ndarray]  # value, cost, candidate index


def _pieces(
    layermerge: LayerMergeTable,
    chain: int,
    prec: float,
    linear: Container[tuple[int, int]],
    latency: OptimalLatencyTable | None,
    importance: ExtendedImportanceTable | None,
) -> Cands:
    """The candidates of one chain: ICML'23 rows (if given), then LayerMerge rows."""
    length = layermerge.length
    cands: Cands = [[[], []] for _ in range(length + 1)]
    if latency is not None and importance is not None:
        if latency.lengths.get(chain) != length or importance.lengths.get(chain) != length:
            raise TableError(
                f"chain {chain}: the tables disagree on its length (latency "
                f"{latency.lengths.get(chain)}, importance {importance.lengths.get(chain)}, "
                f"LayerMerge {length})"
            )
        for (c, i, m, j, a), h in importance.values.items():
            if c == chain:
                t = latency.times[c, i, m]
                cands[m][a].append(
                    Piece(i, m, j, a, int(t * prec), h, t, latency.splits[c, i, m], None)
                )
    for v in layermerge.variants:
        e = 0 if (v.st, v.end) in linear else 1
        for j in (0, 1):
            g = int(v.time * prec)
            cands[v.end][e].append(Piece(v.st, v.end, j, e, g, v.importance, v.time, (), v))
    return cands


def _forward(
    chains: list[Cands], T: int
) -> tuple[list[list[list[_State | None]]], list[np.ndarray]]:
    """Per chain, D, C and back-pointers per (m, a) for t = 0 … T, and each chain's end flag."""
    n = T + 1
    base = np.full(n, -np.inf)
    base[:T] = 0.0
    start: _State = (base, np.zeros(n, dtype=np.int64), np.full(n, -1, dtype=np.int32))
    all_states, flags = [], []
    for cands in chains:
        states: list[list[_State | None]] = [[None, None] for _ in cands]
        states[0][1] = start
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
        all_states.append(states)
        ends = [
            s if s is not None else (np.full(n, -np.inf), start[1], start[2]) for s in states[-1]
        ]
        flag = (ends[1][0] > ends[0][0]).astype(np.int8)  # a = 0 wins exact ties
        start = (
            np.where(flag == 1, ends[1][0], ends[0][0]),
            np.where(flag == 1, ends[1][1], ends[0][1]),
            start[2],
        )
        flags.append(flag)
    return all_states, flags


def solve_combined(
    layermerge: Mapping[int, LayerMergeTable],
    budget: float,
    prec: float = 20,
    *,
    latency: OptimalLatencyTable | None = None,
    importance: ExtendedImportanceTable | None = None,
    linear: Mapping[int, Container[tuple[int, int]]] | None = None,
) -> CombinedSolution:
    """Maximise Σ importance under Σ⌊prec·T⌋ ≤ int(prec·budget) over both methods' rows.

    ``layermerge``: each chain's variants (chain index → table, in chain order), on the same
    importance scale and timing setting as ``latency``/``importance`` (ICML'23's T_opt and
    I_ext; both or neither). ``linear``: per chain, the blocks whose variants end without an
    activation. Raises :class:`depthfx.InfeasibleBudget` (with the smallest feasible budget)
    when nothing fits.
    """
    if not (math.isfinite(budget) and math.isfinite(prec) and prec > 0):
        raise ValueError(f"budget and prec must be finite and prec > 0 (got {budget}, {prec})")
    if (latency is None) != (importance is None):
        raise ValueError("give both ICML'23 tables (latency and importance) or neither")
    order = list(layermerge)
    chains = [
        _pieces(layermerge[c], c, prec, (linear or {}).get(c, ()), latency, importance)
        for c in order
    ]
    units = int(budget * prec)
    most = sum(
        max((p.g for rows in at_m for p in rows), default=0) for ch in chains for at_m in ch[1:]
    )
    T = min(units, most + 1)
    if T < 1 or not _reaches(chains, T):
        unit = latency.unit if latency is not None else layermerge[order[0]].unit
        raise InfeasibleBudget(budget, _min_feasible(chains, most, prec), unit)
    states, flags = _forward(chains, T)
    last = states[-1][-1]
    finals = [float(s[0][T]) if s is not None else -math.inf for s in last]
    a = int(np.argmax(finals))  # a = 0 wins an exact tie, like DP2's final argmax
    t, per_chain = T, []
    for c in range(len(chains) - 1, -1, -1):
        m, chosen = len(chains[c]) - 1, []
        while m > 0:
            state = states[c][m][a]
            assert state is not None
            p = chains[c][m][a][int(state[2][t])]
            chosen.append(p)
            t, m, a = t - p.g, p.st, p.st_act
        assert a == 1
        per_chain.append(chosen[::-1])
        if c > 0:
            a = int(flags[c - 1][t])
    assert t < T
    per_chain.reverse()
    objective, time_units, time, parts = 0.0, 0, 0.0, []
    for c, chosen in zip(order, per_chain, strict=True):
        acts, merge, pruned = set(), set(), set()
        for p in chosen:
            objective, time_units, time = objective + p.h, time_units + p.g, time + p.time
            merge.update(p.splits or (p.st, p.end))
            if p.end_act:
                acts.add(p.end)
            if p.variant is not None:
                pruned.update(q for q in range(p.st + 1, p.end + 1) if q not in p.variant.kept)
        merge.discard(0)
        parts.append(CombinedChain(c, sorted(acts), sorted(merge), sorted(pruned), chosen))
    assert objective == max(finals) and time_units <= units
    return CombinedSolution(parts, objective, time_units, time, budget, prec, units)


def _reaches(chains: list[Cands], T: int) -> bool:
    """Whether D(T, L, ·) of the last chain exists."""
    return any(s is not None and s[0][T] > -np.inf for s in _forward(chains, T)[0][-1][-1])


def _min_feasible(chains: list[Cands], most: int, prec: float) -> float:
    """Smallest budget (in the table's unit) whose DP reaches the end: feasibility is monotone
    in T (D(T, L) exists iff some path costs 1 … T), so bisect on T; then the smallest float
    budget with that many units, so any smaller budget is infeasible."""
    lo, hi = 1, most + 1
    if not _reaches(chains, hi):
        raise TableError("no tiling of the chains into table rows")
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _reaches(chains, mid) else (mid + 1, hi)
    return min_budget(lo, prec)


__all__ = ["CombinedChain", "CombinedSolution", "Piece", "solve_combined"]
