"""DP2 of Kim et al. (ICML 2023), exactly as the original code computes it (spec §4): the
activation and merge pattern with the largest Σ I_ext under a latency budget.

Maximise Σ I_ext(b_{k−1}, b_k, a_{k−1}, a_k) subject to Σ ⌊prec·T_opt(b_{k−1}, b_k)⌋ ≤ T =
int(prec·T0) (truncation). D(t, m, a) is the best value of a prefix ending in a DP block end m
with activation flag a and integer cost ≤ t; the base is D(t, 0, 1) = 0 for t = 0 … T−1 (not T,
as in the original). Candidates are scanned in (i ascending, j = 0 then 1) order and one
replaces the incumbent iff round(cand, 7) > round(best, 7), or they are equal after rounding and
the candidate's integer cost is strictly smaller (Python's ``round``, reproduced exactly:
:func:`round7`). The final flag is the plain argmax of D(T, L, a), a = 0 winning an exact tie.
Values are summed from the first block forward, so the recomputed objective equals D(T, L, a*)
bit for bit (asserted).

Vectorised over the budget axis t with NumPy; back-pointers replace the original's per-state
merge-position sets. Several chains share ONE budget: chain c+1's position 0 (flag 1) is fed,
for every t, by chain c's end state, choosing the flag like the final argmax (a = 0 on exact
ties). With one chain this is the paper's DP.

Differences from the original, on purpose: it calls ``exit()`` when some position m has
t_min(m) > T even if a feasible path skips m, and when no final state exists. Here only a
missing final state is an error, :class:`depthfx.InfeasibleBudget`, which carries the smallest
T0 with a solution. Budgets above the most expensive configuration are clamped (which provably
changes nothing) so that huge budgets do not allocate huge arrays.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from depthfx.blocks import Block, ExtendedBlock
from depthfx.errors import InfeasibleBudget, TableError
from depthfx.solver.importance_table import ExtendedImportanceTable, ImportanceTable
from depthfx.solver.latency_table import LatencyTable, OptimalLatencyTable
from depthfx.solver.merge_pattern import optimal_merge_pattern

#: Integer units the original's chain time is divided into when ``depthfx.plan`` is given no
#: ``prec`` (from the tables alone, so a budget and the minimum it reports share one
#: discretisation): a unit is 0.05 % of that time, coarse enough for millisecond solves.
BUDGET_UNITS = 2000


def units_per_ms(original_ms: float) -> float:
    """The ``prec`` that gives a chain time of ``original_ms`` exactly BUDGET_UNITS integer
    units (int() truncates a product that rounds an ulp low, so the quotient is nudged up)."""
    prec = BUDGET_UNITS / original_ms
    while int(original_ms * prec) < BUDGET_UNITS:
        prec = math.nextafter(prec, math.inf)
    return prec


@dataclass(frozen=True)
class ChainSolution:
    """One chain's part of a solution: A, S (sorted, 0 excluded) and its DP blocks."""

    chain: int
    act_pos: list[int]
    merge_pos: list[int]
    blocks: list[ExtendedBlock]
    objective: float
    time_units: int
    time: float


@dataclass(frozen=True)
class Solution:
    """Result of :func:`solve`. ``objective`` = Σ I_ext, ``time_units`` = Σ⌊prec·T_opt⌋,
    ``time`` = Σ T_opt over all chains' DP blocks, in chain then position order.

    ``merge_check`` says whether the merge-pattern DP on the raw table reproduces S for the
    chosen A (None when no raw table was given); ``fastest_merge_pos`` holds that DP's S per
    chain, the fastest S ⊇ A on the raw table, which plans deploy (not written by
    :meth:`to_dict`).
    """

    chains: list[ChainSolution]
    objective: float
    time_units: int
    time: float
    budget: float
    prec: float
    budget_units: int
    merge_check: bool | None = None
    fastest_merge_pos: list[list[int]] | None = None

    def _single(self) -> ChainSolution:
        if len(self.chains) != 1:
            raise ValueError(
                f"this solution covers {len(self.chains)} chains; use sol.chains[c].act_pos "
                "and sol.chains[c].merge_pos"
            )
        return self.chains[0]

    @property
    def act_pos(self) -> list[int]:
        """Kept activations A of a one-chain solution (the paper's ``act_pos``)."""
        return self._single().act_pos

    @property
    def merge_pos(self) -> list[int]:
        """Merge boundaries S of a one-chain solution (the paper's ``merge_pos``)."""
        return self._single().merge_pos

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; flat ``act_pos``/``merge_pos`` for one chain, else ``chains``."""
        out: dict[str, Any] = {}
        if len(self.chains) == 1:
            out.update(act_pos=self.act_pos, merge_pos=self.merge_pos)
        else:
            out["chains"] = [
                {"chain": c.chain, "act_pos": c.act_pos, "merge_pos": c.merge_pos}
                for c in self.chains
            ]
        out.update(
            objective=self.objective,
            time_units=self.time_units,
            time=self.time,
            budget=self.budget,
            prec=self.prec,
            merge_check=self.merge_check,
        )
        return out


@dataclass
class ChainCosts:
    """One chain pre-indexed for the DPs: integer costs, T_opt, DP1 splits, candidate lists."""

    chain: int
    length: int
    cost: dict[Block, int]
    time: dict[Block, float]
    splits: dict[Block, tuple[int, ...]]
    imp: dict[ExtendedBlock, float]
    # cands[m][a] = [(i, j, g, h), ...] in (i ascending, j = 0 then 1) order
    cands: list[list[list[tuple[int, int, int, float]]]]


def round7(x: np.ndarray) -> np.ndarray:
    """Python's ``round(v, 7)`` elementwise: the rounding DP2 compares candidates after (the
    original code's rule, see the module docstring). ``np.round`` rounds fl(v·1e7), which can
    differ when v·1e7 lies within an ulp of a half-integer; those few values use Python's
    round. ``-inf`` stays ``-inf``."""
    with np.errstate(invalid="ignore", over="ignore"):
        y = x * 1e7
        out = np.round(x, 7)
        near = (np.abs(y - np.floor(y) - 0.5) < 1e-6) | (np.abs(y) >= 2.0**33)
    near &= np.isfinite(x)
    if near.any():
        idx = np.flatnonzero(near)
        out[idx] = [round(float(v), 7) for v in x[idx]]
    return out


def index_chains(
    opt: OptimalLatencyTable, ext: ExtendedImportanceTable, prec: float
) -> list[ChainCosts]:
    """Check that the two tables describe the same blocks and index them per chain."""
    if set(opt.lengths) != set(ext.lengths):
        raise TableError(
            f"{ext.source}: chains {sorted(ext.lengths)} do not match the latency table's "
            f"chains {sorted(opt.lengths)} ({opt.source})"
        )
    timed = set(opt.times)
    covered = {k[:3] for k in ext.values}
    for key in ext.values:
        if key[:3] not in timed:
            raise TableError(
                f"{ext.source}: line {ext.rows.get(key, '?')}: importance for block "
                f"(chain={key[0]}, st={key[1]}, end={key[2]}) which has no latency row in "
                f"{opt.source} (not a valid block)"
            )
    for key in opt.times:
        if key not in covered:
            raise TableError(
                f"{opt.source}: line {opt.rows.get(key, '?')}: block (chain={key[0]}, "
                f"st={key[1]}, end={key[2]}) has no importance entry in {ext.source}"
            )
    chains = []
    for c, length in opt.lengths.items():
        cost = {k[1:]: int(v * prec) for k, v in opt.times.items() if k[0] == c}
        imp = {k[1:]: v for k, v in ext.values.items() if k[0] == c}
        cands: list[list[list[tuple[int, int, int, float]]]] = [[[], []] for _ in range(length + 1)]
        for i, m, j, a in sorted(imp):
            cands[m][a].append((i, j, cost[i, m], imp[i, m, j, a]))
        chains.append(
            ChainCosts(
                chain=c,
                length=length,
                cost=cost,
                time={k[1:]: v for k, v in opt.times.items() if k[0] == c},
                splits={k[1:]: v for k, v in opt.splits.items() if k[0] == c},
                imp=imp,
                cands=cands,
            )
        )
    return chains


def _cost_bounds(chains: Sequence[ChainCosts], source: str) -> tuple[float, float]:
    """(smallest positive, largest) integer cost of a complete configuration over all chains.

    The base case D(t, 0, 1) exists only for t ≤ T−1, so the final state D(T, L, ·) is reached
    exactly by configurations with cost in [1, T]: T is feasible iff T ≥ the smallest positive
    cost. Tracked per state: min cost, min cost ≥ 1, max cost.
    """
    start = (0.0, math.inf, 0.0)
    for ch in chains:
        state: dict[tuple[int, int], tuple[float, float, float]] = {(0, 1): start}
        for m in range(1, ch.length + 1):
            for a in (0, 1):
                lo = pos = math.inf
                hi = -math.inf
                for i, j, g, _ in ch.cands[m][a]:
                    if (i, j) in state:
                        p_lo, p_pos, p_hi = state[i, j]
                        lo, hi = min(lo, p_lo + g), max(hi, p_hi + g)
                        pos = min(pos, p_lo + g if p_lo + g >= 1 else p_pos + g)
                if lo < math.inf:
                    state[m, a] = (lo, pos, hi)
        ends = [state[ch.length, a] for a in (0, 1) if (ch.length, a) in state]
        if not ends:
            raise TableError(
                f"{source}: chain {ch.chain}: the tables admit no configuration from position 0 "
                f"to {ch.length} (missing blocks or activation flags)"
            )
        start = (min(e[0] for e in ends), min(e[1] for e in ends), max(e[2] for e in ends))
    return start[1], start[2]


def min_budget(units: float, prec: float) -> float:
    """Smallest float T0 with int(T0·prec) ≥ units: the budget an infeasible solve reports."""
    x = units / prec
    while int(x * prec) < units:
        x = math.nextafter(x, math.inf)
    while int(math.nextafter(x, -math.inf) * prec) >= units:
        x = math.nextafter(x, -math.inf)
    return x


_State = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # value, cost, ptr i, ptr j


def _forward(
    chains: Sequence[ChainCosts], T: int
) -> tuple[list[list[list[_State | None]]], list[np.ndarray]]:
    """DP2 tables for t = 0 … T; per chain ``states[m][a]`` and the flag feeding each start."""
    n = T + 1
    val = np.full(n, -np.inf)
    val[:T] = 0.0
    cost = np.zeros(n, dtype=np.int64)
    none = np.full(n, -1, dtype=np.int16)
    start: _State = (val, cost, none, none)
    all_states: list[list[list[_State | None]]] = []
    start_flags: list[np.ndarray] = []
    for ch in chains:
        states: list[list[_State | None]] = [[None, None] for _ in range(ch.length + 1)]
        states[0][1] = start
        for m in range(1, ch.length + 1):
            for a in (0, 1):
                best = np.full(n, -np.inf)
                rbest = np.full(n, -np.inf)
                bcost = np.zeros(n, dtype=np.int64)
                bi = np.full(n, -1, dtype=np.int16)
                bj = np.full(n, -1, dtype=np.int16)
                for i, j, g, h in ch.cands[m][a]:
                    prev = states[i][j]
                    if prev is None or g > T:
                        continue
                    cv = prev[0][: n - g] + h
                    cc = prev[1][: n - g] + g
                    rc = round7(cv)
                    rb = rbest[g:]
                    take = ((rc > rb) | ((rc == rb) & (cc < bcost[g:]))) & (cv > -np.inf)
                    np.copyto(best[g:], cv, where=take)
                    np.copyto(rb, rc, where=take)
                    np.copyto(bcost[g:], cc, where=take)
                    bi[g:][take] = i
                    bj[g:][take] = j
                if (bi >= 0).any():
                    states[m][a] = (best, bcost, bi, bj)
        all_states.append(states)
        end0, end1 = states[ch.length]
        v0 = end0[0] if end0 is not None else np.full(n, -np.inf)
        v1 = end1[0] if end1 is not None else np.full(n, -np.inf)
        flag = (v1 > v0).astype(np.int8)  # a = 0 wins exact ties, like the final argmax
        c0 = end0[1] if end0 is not None else cost
        c1 = end1[1] if end1 is not None else cost
        start = (np.where(flag == 1, v1, v0), np.where(flag == 1, c1, c0), none, none)
        start_flags.append(flag)
    return all_states, start_flags


def solve(
    latency: LatencyTable | OptimalLatencyTable,
    importance: ImportanceTable | ExtendedImportanceTable,
    budget: float,
    prec: float = 20,
    *,
    warn: bool = True,
) -> Solution:
    """Maximise Σ I_ext under Σ⌊prec·T_opt⌋ ≤ int(prec·budget) (DP2, spec §4).

    ``budget`` is in the latency table's unit (ms for the paper's tables). Raw tables are
    turned into T_opt (DP1) and I_ext (DP3) first; with a raw latency table the result is
    cross-checked against :func:`optimal_merge_pattern` (``Solution.merge_check``, a warning
    if it fails unless ``warn=False``: plans deploy the merge DP's S anyway, kept in
    ``Solution.fastest_merge_pos``). Raises
    :class:`depthfx.InfeasibleBudget` (with the smallest feasible budget) when no configuration
    fits, :class:`depthfx.TableError` when the tables do not match.
    """
    if not (math.isfinite(budget) and math.isfinite(prec) and prec > 0):
        raise ValueError(f"budget and prec must be finite and prec > 0 (got {budget}, {prec})")
    raw = latency if isinstance(latency, LatencyTable) else None
    opt = latency.optimal() if isinstance(latency, LatencyTable) else latency
    ext = importance.extended() if isinstance(importance, ImportanceTable) else importance
    chains = index_chains(opt, ext, prec)
    units = int(budget * prec)
    need, most = _cost_bounds(chains, opt.source)
    if math.isinf(need):
        raise TableError(
            f"{opt.source}: every configuration costs 0 units at prec={prec:g}; raise prec"
        )
    T = min(units, int(most) + 1)
    final: list[float] = [-math.inf, -math.inf]
    states: list[list[list[_State | None]]] = []
    start_flags: list[np.ndarray] = []
    if T >= 1:
        states, start_flags = _forward(chains, T)
        final = [float(s[0][T]) if s is not None else -math.inf for s in states[-1][-1]]
    if final == [-math.inf, -math.inf]:
        assert units < need, "DP2 found no state although a configuration fits"
        raise InfeasibleBudget(budget, min_budget(need, prec), opt.unit)
    a = int(np.argmax(final))
    solution = _backtrack(chains, states, start_flags, T, a, final[a], budget, prec, units)
    return solution if raw is None else check_merge_pattern(solution, raw, warn=warn)


def check_merge_pattern(solution: Solution, raw: LatencyTable, *, warn: bool = True) -> Solution:
    """``solution`` with the merge-pattern DP's S for each chain's A on the raw table
    (``fastest_merge_pos``, which plans deploy) and whether it reproduces the DP's S."""
    check = [optimal_merge_pattern(c.act_pos, raw, c.chain).merge_pos for c in solution.chains]
    ok = all(s == c.merge_pos for s, c in zip(check, solution.chains, strict=True))
    if not ok and warn:
        warnings.warn(
            "DP2's merge positions differ from the merge-pattern DP on the raw latency table "
            f"(DP2: {[c.merge_pos for c in solution.chains]}, merge DP: {check})",
            RuntimeWarning,
            stacklevel=3,
        )
    return replace(solution, merge_check=ok, fastest_merge_pos=check)


def _backtrack(
    chains: Sequence[ChainCosts],
    states: list[list[list[_State | None]]],
    start_flags: list[np.ndarray],
    T: int,
    a: int,
    value: float,
    budget: float,
    prec: float,
    units: int,
) -> Solution:
    """Follow back-pointers from (T, L, a*) through every chain; recompute and check sums."""
    t = T
    per_chain: list[list[ExtendedBlock]] = []
    for c in range(len(chains) - 1, -1, -1):
        ch, m, blocks = chains[c], chains[c].length, []
        while m > 0:
            st = states[c][m][a]
            assert st is not None
            i, j = int(st[2][t]), int(st[3][t])
            blocks.append((i, m, j, a))
            t -= ch.cost[i, m]
            m, a = i, j
        per_chain.append(blocks[::-1])
        if c > 0:
            a = int(start_flags[c - 1][t])
    assert states[0][0][1] is not None and states[0][0][1][0][t] == 0.0
    per_chain.reverse()
    results, objective, time_units, time = chain_results(chains, per_chain)
    assert objective == value, f"recomputed objective {objective!r} != DP value {value!r}"
    assert time_units <= units
    return Solution(results, objective, time_units, time, budget, prec, units)


def chain_results(
    chains: Sequence[ChainCosts], per_chain: Sequence[Sequence[ExtendedBlock]]
) -> tuple[list[ChainSolution], float, int, float]:
    """Each chain's A, S and sums for its DP blocks, and the totals (objective, units, time),
    summed from the first block forward."""
    objective, time_units, time = 0.0, 0, 0.0
    results = []
    for ch, blocks in zip(chains, per_chain, strict=True):
        c_obj, c_units, c_time = 0.0, 0, 0.0
        acts, ends, merge = set(), set(), set()
        for i, m, j, a_m in blocks:
            h, g, f = ch.imp[i, m, j, a_m], ch.cost[i, m], ch.time[i, m]
            objective, c_obj = objective + h, c_obj + h
            time_units, c_units = time_units + g, c_units + g
            time, c_time = time + f, c_time + f
            ends.add(m)
            merge.update(ch.splits[i, m])
            if a_m:
                acts.add(m)
        merge.discard(0)
        assert acts <= merge and ends <= merge
        results.append(
            ChainSolution(
                ch.chain, sorted(acts), sorted(merge), list(blocks), c_obj, c_units, c_time
            )
        )
    return results, objective, time_units, time
