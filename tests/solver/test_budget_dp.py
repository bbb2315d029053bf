"""DP2 (``solve``): brute force and a scalar transcription of the original code on small random
chains (one and several chains), the tie rules of spec §4.2/§4.3 on hand-built chains (rounding
to 7 decimals, the integer-cost tie-break, the final argmax without rounding, the base case
t = 0 … T−1), table mismatches and infeasible budgets."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from solver_helpers import (
    GOOD_IMP,
    GOOD_LAT,
    IMP,
    configurations,
    fold,
    paper_table,
    random_instance,
    reference_dp2,
    tables,
    write_file,
)

from depthfx import InfeasibleBudget, TableError
from depthfx.solver import ImportanceTable, LatencyTable, optimal_merge_pattern, round7, solve

PREC = 10
# Random tables may legitimately fail the merge cross-check (warning); it is checked explicitly.
RANDOM_TABLES = pytest.mark.filterwarnings("ignore:DP2's merge positions:RuntimeWarning")


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
    assert sol.objective == fold(values)
    # merge check: the raw-table DP's S is at least as fast as DP2's S for the same A; they can
    # differ on random tables (DP2 may pass through a slower activation-free block end)
    for cs, check in zip(sol.chains, sol.fastest_merge_pos, strict=True):
        mp = optimal_merge_pattern(cs.act_pos, lat, cs.chain)
        assert mp.merge_pos == check
        pts = [0, *cs.merge_pos]
        assert mp.time <= fold([lat.times[cs.chain, *p] for p in itertools.pairwise(pts)])
    assert sol.merge_check == all(
        cs.merge_pos == check for cs, check in zip(sol.chains, sol.fastest_merge_pos, strict=True)
    )
    assert (sol.time_units, sol.time) == (units, time)
    assert 1 <= units <= sol.budget_units


@RANDOM_TABLES
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
        feasible = [fold(v) for g, v, _ in configs if 1 <= g <= units]
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
            {k[1:]: v for k, v in opt.splits.items()},
            iext,
            length,
            budget,
            PREC,
        )
        assert ref is not None
        assert (set(sol.act_pos), set(sol.merge_pos)) == (ref[0], ref[1])
        assert (sol.objective, sol.time_units, sol.time) == (ref[2], ref[3], ref[4])


@RANDOM_TABLES
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
        (sum(g for g, _, _ in combo), fold([v for _, vals, _ in combo for v in vals]))
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


@RANDOM_TABLES
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
    assert np.array_equal(round7(x), expected)
    y = np.array([-np.inf, 1.0])
    assert round7(y)[0] == -np.inf


def _lat(times: dict[tuple[int, int], float]) -> LatencyTable:
    return LatencyTable.from_entries(times)


def _imp(scores: dict[tuple[int, int, int, int], float]) -> ImportanceTable:
    return ImportanceTable.from_entries(scores, norm="none")


def _two_ways(delta: float, direct_time: float) -> tuple[LatencyTable, ImportanceTable]:
    """Reach position 2 directly (scanned first, i = 0) or through position 1 (i = 1)."""
    lat = _lat({(0, 1): 0.25, (1, 2): 0.25, (0, 2): direct_time})
    imp = _imp({(0, 1, 1, 1): 0.5, (1, 2, 1, 1): 0.5 + delta, (0, 2, 1, 1): 1.0})
    return lat, imp


def test_rounded_tie_keeps_cheaper_incumbent() -> None:
    lat, imp = _two_ways(4e-8, 0.3)  # direct: 3 units; via 1: 2 + 2 units
    sol = solve(lat, imp, 1.0, prec=10)
    # 1.00000004 rounds to 1.0: a tie, and the via-1 candidate is not cheaper
    assert (sol.act_pos, sol.objective, sol.time_units) == ([2], 1.0, 3)


def test_rounding_is_to_seven_decimals() -> None:
    lat, imp = _two_ways(3e-7, 0.3)
    sol = solve(lat, imp, 1.0, prec=10)
    assert sol.act_pos == [1, 2] and sol.objective == 0.5 + (0.5 + 3e-7)


def test_rounded_tie_takes_strictly_cheaper_candidate() -> None:
    # T_opt(0, 2) = 0.25 + 0.25 via DP1 costs ⌊5.0⌋ = 5 units; the two blocks cost 2 + 2
    lat, imp = _two_ways(-4e-8, 0.55)
    sol = solve(lat, imp, 1.0, prec=10)
    assert sol.act_pos == [1, 2] and sol.time_units == 4
    assert sol.objective == 0.5 + (0.5 - 4e-8)  # lower than 1.0, yet chosen


def test_final_argmax_is_exact_and_prefers_no_activation() -> None:
    lat = _lat({(0, 1): 0.5})
    tie = solve(lat, _imp({(0, 1, 1, 1): 1.0, (0, 1, 1, 0): 1.0}), 1.0, prec=10)
    assert tie.act_pos == [] and tie.merge_pos == [1]
    tiny = solve(lat, _imp({(0, 1, 1, 1): 1.0 + 2e-16, (0, 1, 1, 0): 1.0}), 1.0, prec=10)
    assert tiny.act_pos == [1]  # no rounding at the final argmax


def test_base_case_excludes_t_equal_budget() -> None:
    """A configuration of cost 0 units never reaches D(T, L): the base is t = 0 … T−1."""
    # g = 0 and 0; T_opt(0, 2) = 0.05 + 0.05 (DP1 split), g = 1
    lat = _lat({(0, 1): 0.05, (1, 2): 0.05, (0, 2): 0.5})
    imp = _imp({(0, 1, 1, 1): 5.0, (1, 2, 1, 1): 5.0, (0, 2, 1, 1): 1.0})
    with pytest.raises(InfeasibleBudget) as err:
        solve(lat, imp, 0.05, prec=10)
    assert err.value.minimum == 0.1
    sol = solve(lat, imp, 0.3, prec=10)  # the better cost-0 path (value 10) stays unreachable
    assert (sol.act_pos, sol.merge_pos, sol.objective, sol.time_units) == ([2], [1, 2], 1.0, 1)


def test_tables_must_match(tmp_path: Path) -> None:
    lat = LatencyTable.read_csv(write_file(tmp_path, "time.csv", GOOD_LAT + "3,2,3,1.0,0.1\n"))
    imp = ImportanceTable.read_csv(write_file(tmp_path, "imp.csv", GOOD_IMP))
    with pytest.raises(TableError, match=r"time\.csv: line 5: block .*st=2, end=3.* no importance"):
        solve(lat, imp, 10.0)
    extra = GOOD_IMP + "0,3,0,3,1,1,0,0,0,-1\n"
    lat = LatencyTable.read_csv(write_file(tmp_path, "time.csv", GOOD_LAT))
    imp = ImportanceTable.read_csv(write_file(tmp_path, "imp2.csv", extra))
    with pytest.raises(TableError, match=r"imp2\.csv: line 5: importance for block .*no latency"):
        solve(lat, imp, 10.0)


def test_infeasible_budget_names_minimum(data_dir: Path) -> None:
    lat = LatencyTable.read_csv(paper_table(data_dir, "mbv2_1.0", "time"))
    imp = ImportanceTable.read_csv(data_dir / IMP, alpha=1.6)
    with pytest.raises(InfeasibleBudget) as err:
        solve(lat, imp, 5.0, prec=20)
    minimum = err.value.minimum
    assert repr(minimum) in str(err.value) and "5 ms" in str(err.value)
    # independent bound: the floor of any configuration is at least Σ_m-free cheapest path,
    # and with all activations removed the float optimum is 6.467 ms (spec §6.4)
    assert 5.0 < minimum <= 6.467
    sol = solve(lat, imp, minimum, prec=20)
    assert sol.time_units == int(minimum * 20) and sol.merge_check
    with pytest.raises(InfeasibleBudget):
        solve(lat, imp, math.nextafter(minimum, 0), prec=20)
    with pytest.raises(InfeasibleBudget):
        solve(lat, imp, minimum - 1e-9, prec=20)
