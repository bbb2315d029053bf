"""DP1, DP3, DP2 and the merge-pattern DP against brute force on small random chains, and DP2
against a scalar transcription of the original code (tie rules included)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from solver_helpers import (
    brute_iext,
    brute_merge,
    brute_topt,
    configurations,
    random_instance,
    reference_dp2,
    tables,
)

from depthfx import InfeasibleBudget, TableError
from depthfx.solver import ImportanceTable, LatencyTable, optimal_merge_pattern, solve
from depthfx.solver.dp import _round7

PREC = 10
# Random tables may legitimately fail the merge cross-check (warning); it is checked explicitly.
pytestmark = pytest.mark.filterwarnings("ignore:DP2's merge positions:RuntimeWarning")


def _fold(values: list[float]) -> float:
    total = 0.0
    for v in values:
        total += v
    return total


def _check_solution_is_consistent(sol, lat, imp, prec: float) -> None:
    """Blocks chain up, exist in the tables, and the reported sums recompute exactly."""
    opt, ext = lat.optimal(), imp.extended()
    values, units, time = [], 0, 0.0
    for cs in sol.chains:
        st, sa = 0, 1
        for i, m, j, a in cs.blocks:
            assert (i, j) == (st, sa)
            values.append(ext.values[cs.chain, i, m, j, a])
            units += int(opt.times[cs.chain, i, m] * prec)
            time += opt.times[cs.chain, i, m]
            st, sa = m, a
        assert st == opt.lengths[cs.chain]
        assert set(cs.act_pos) <= set(cs.merge_pos)
    assert sol.objective == _fold(values)
    # merge check: the raw-table DP's S is at least as fast as DP2's S for the same A; they can
    # differ on random tables (DP2 may pass through a slower activation-free block end)
    for cs, check in zip(sol.chains, sol.merge_check_pos, strict=True):
        mp = optimal_merge_pattern(cs.act_pos, lat, cs.chain)
        assert mp.merge_pos == check
        pts = [0, *cs.merge_pos]
        assert mp.time <= _fold([lat.times[cs.chain, *p] for p in itertools.pairwise(pts)])
    assert sol.merge_check == all(
        cs.merge_pos == check for cs, check in zip(sol.chains, sol.merge_check_pos, strict=True)
    )
    assert (sol.time_units, sol.time) == (units, time)
    assert 1 <= units <= sol.budget_units


@pytest.mark.parametrize("seed", range(60))
def test_dp1_dp3_match_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    inst = random_instance(rng, int(rng.integers(1, 8)), quantised=seed % 2 == 0)
    lat, imp = tables([inst], alpha=float(rng.uniform(0, 2)))
    opt = lat.optimal()
    for st, end in inst.blocks:
        assert opt.times[0, st, end] == brute_topt(inst.times, st, end)
        pieces = list(itertools.pairwise(opt.breaks[0, st, end]))
        assert opt.times[0, st, end] == _fold([inst.times[p] for p in pieces])
    h = {k[1:]: v for k, v in imp.normalised().items()}
    ext = imp.extended()
    for key in inst.ext:
        assert ext.values[(0, *key)] == brute_iext(h, key)


@pytest.mark.parametrize("seed", range(80))
def test_dp2_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(1000 + seed)
    length = int(rng.integers(1, 8))
    inst = random_instance(rng, length, quantised=seed % 2 == 0)
    lat, imp = tables([inst], alpha=float(rng.uniform(0, 2)))
    opt, ext = lat.optimal(), imp.extended()
    cost = {b: int(opt.times[(0, *b)] * PREC) for b in inst.blocks}
    iext = {k[1:]: v for k, v in ext.values.items()}
    configs = configurations(length, cost, iext)
    top = max(g for g, _, _ in configs)
    for units in sorted({0, 1, top // 3, top // 2, top, top + 5, int(rng.integers(0, top + 2))}):
        budget = units / PREC + 1e-9
        feasible = [_fold(v) for g, v, _ in configs if 1 <= g <= units]
        positive = [g for g, _, _ in configs if g >= 1]
        if not positive:  # every configuration rounds to 0 units: no budget reaches D(T, L)
            with pytest.raises(TableError, match="costs 0 units"):
                solve(lat, imp, budget, PREC)
            break
        if not feasible:
            with pytest.raises(InfeasibleBudget) as err:
                solve(lat, imp, budget, PREC)
            assert int(err.value.minimum * PREC) == min(positive)
            assert int(math.nextafter(err.value.minimum, 0) * PREC) < min(positive)
            continue
        sol = solve(lat, imp, budget, PREC)
        assert sol.objective == pytest.approx(max(feasible), abs=1e-6)
        if seed % 2 == 0:  # quantised values: sums and rounding are exact
            assert sol.objective == max(feasible)
        _check_solution_is_consistent(sol, lat, imp, PREC)
        ref = reference_dp2(
            {k[1:]: v for k, v in opt.times.items()},
            {k[1:]: v for k, v in opt.breaks.items()},
            iext,
            length,
            budget,
            PREC,
        )
        assert ref is not None
        assert (set(sol.act_pos), set(sol.merge_pos)) == (ref[0], ref[1])
        assert (sol.objective, sol.time_units, sol.time) == (ref[2], ref[3], ref[4])


@pytest.mark.parametrize("seed", range(40))
def test_merge_pattern_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(2000 + seed)
    length = int(rng.integers(1, 8))
    inst = random_instance(rng, length, quantised=seed % 2 == 0)
    lat, _ = tables([inst])
    acts = {p for p in range(1, length + 1) if rng.random() < 0.4}
    expected = brute_merge(inst.times, length, acts)
    if math.isinf(expected):
        with pytest.raises(Exception, match="no valid blocks"):
            optimal_merge_pattern(acts, lat)
        return
    mp = optimal_merge_pattern(acts, lat)
    assert mp.time == expected
    assert acts <= set(mp.merge_pos) and length in mp.merge_pos
    pts = [0, *mp.merge_pos]
    assert _fold([inst.times[p] for p in itertools.pairwise(pts)]) == mp.time


@pytest.mark.parametrize("seed", range(25))
def test_multi_chain_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(3000 + seed)
    insts = [
        random_instance(rng, int(rng.integers(1, 5)), quantised=seed % 2 == 0)
        for _ in range(int(rng.integers(2, 4)))
    ]
    lat, imp = tables(insts, alpha=1.2)
    opt, ext = lat.optimal(), imp.extended()
    per_chain = []
    for c, inst in enumerate(insts):
        cost = {b: int(opt.times[(c, *b)] * PREC) for b in inst.blocks}
        iext = {k[1:]: v for k, v in ext.values.items() if k[0] == c}
        per_chain.append(configurations(inst.length, cost, iext))
    combos = [
        (sum(g for g, _, _ in combo), _fold([v for _, vals, _ in combo for v in vals]))
        for combo in itertools.product(*per_chain)
    ]
    top = max(g for g, _ in combos)
    for units in sorted({top // 2, (2 * top) // 3, top + 1}):
        budget = units / PREC + 1e-9
        feasible = [v for g, v in combos if 1 <= g <= units]
        if not feasible:
            with pytest.raises(InfeasibleBudget):
                solve(lat, imp, budget, PREC)
            continue
        sol = solve(lat, imp, budget, PREC)
        assert len(sol.chains) == len(insts)
        assert sol.objective == pytest.approx(max(feasible), abs=1e-6)
        _check_solution_is_consistent(sol, lat, imp, PREC)
    with pytest.raises(ValueError, match=r"sol\.chains"):
        _ = sol.act_pos


def test_single_chain_equals_chain_zero_of_nothing_else() -> None:
    """A chain id other than 0 alone behaves like the paper's single chain."""
    rng = np.random.default_rng(7)
    inst = random_instance(rng, 6, quantised=False)
    lat0, imp0 = tables([inst])
    lat5 = LatencyTable.from_entries({(5, *k[1:]): v for k, v in lat0.times.items()})
    imp5 = ImportanceTable.from_entries({(5, *k[1:]): v for k, v in imp0.scores.items()})
    budget = sum(inst.times.values()) / 3
    s0, s5 = solve(lat0, imp0, budget, PREC), solve(lat5, imp5, budget, PREC)
    assert (s0.act_pos, s0.merge_pos, s0.objective) == (s5.act_pos, s5.merge_pos, s5.objective)


def test_round7_is_pythons_round() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            rng.normal(0, 50, 20000),
            (np.arange(-2000, 2000) + 0.5) / 1e7,  # exact-ish half ties
            np.array([2.675e-7, 1.00000005, -3.00000015, 1e12 + 0.123456789, 0.0, -0.0]),
            rng.integers(-(10**8), 10**8, 5000) / 1e7 + 5e-8,
        ]
    )
    expected = np.array([round(float(v), 7) for v in x])
    assert np.array_equal(_round7(x), expected)
    y = np.array([-np.inf, 1.0])
    assert _round7(y)[0] == -np.inf
