"""The LayerMerge DP (spec §4) on the bundled instances: every run against a transcription of the
original ``optimal_patterns``, the toy chains against brute force at every budget, the tie rules
on hand-built tables, infeasible budgets and the spec's invariants of a solution."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from layermerge_helpers import (
    INSTANCES,
    SMALL,
    all_runs,
    brute_force,
    fold,
    load,
    paths,
    rank,
    reference_optimal_patterns,
    runs,
    structure,
    tilings,
)

from depthfx import InfeasibleBudget, TableError
from depthfx.solver import (
    LayerMergeImportanceTable,
    LayerMergeLatencyTable,
    LayerMergeSolution,
    LayerMergeTable,
    Variant,
    is_valid_block,
    solve_layermerge,
)
from depthfx.solver.layermerge_dp import round7


def _check_consistent(sol: LayerMergeSolution, table: LayerMergeTable, name: str) -> None:
    """Tiling, table membership, residual/break rules, kept subsets and the reported sums."""
    st = structure(name)
    length, convs = st["act_num"], st["convs"]
    residuals = [(int(s), t) for s, t in st["skip_s2t"].items()]
    valid = {tuple(b) for b in st["valid_blocks"]}
    irreducible = {
        c["index"] for c in convs if c["in_channels"] != c["out_channels"] or c["stride"] > 1
    }
    blocks = sol.blocks
    assert sol.length == length
    assert blocks[0].st == 0 and blocks[-1].end == length
    assert all(a.end == b.st for a, b in itertools.pairwise(blocks))
    rows = set(table.variants)
    for v in blocks:
        assert v in rows
        assert v.block in valid and is_valid_block(v.st, v.end, st["str_pos"], residuals)
        assert v.kept and set(v.kept) <= set(range(v.st + 1, v.end + 1))
        assert irreducible & set(range(v.st + 1, v.end + 1)) <= set(v.kept)
    assert sol.act_ind == [v.end for v in blocks]
    assert sol.conv_ind == sorted({p for v in blocks for p in v.kept})
    assert sol.pruned == [p for p in range(1, length + 1) if p not in sol.conv_ind]
    assert not set(sol.pruned) & irreducible
    assert sol.children == {v.end: (v.childkey, v.kept) for v in blocks}
    assert sol.objective == fold([v.importance for v in blocks])
    assert sol.time_units == sum(int(v.time * sol.prec) for v in blocks)
    assert 1 <= sol.time_units <= sol.budget_units == int(sol.budget * sol.prec)
    assert sol.time == fold([v.time for v in blocks])


@pytest.mark.parametrize(("name", "budget", "prec"), all_runs())
def test_run_matches_the_original(name: str, budget: float, prec: int) -> None:
    table = load(name)
    sol = solve_layermerge(table, budget, prec)
    _check_consistent(sol, table, name)
    ref = reference_optimal_patterns(budget, structure(name)["act_num"], *paths(name), prec)
    assert ref is not None
    assert set(sol.act_ind) == ref["act_ind"] and set(sol.conv_ind) == ref["conv_ind"]
    assert {e: (c.variant, str(c.kept)) for e, c in sol.children.items()} == ref["children_dict"]
    assert (sol.objective, sol.time_units, sol.time) == (
        ref["imp_sum"],
        ref["int_time_sum"],
        ref["flt_time_sum"],
    )
    assert json.loads(json.dumps(sol.to_dict()))["act_ind"] == sol.act_ind


def test_spec_facts_of_the_synthetic_runs() -> None:
    """Numbers the spec reports for the synthetic tables (§4.8): real Σ T overshoots T0."""
    mbv2 = load("mbv2_1.0_synth")
    times = [round(solve_layermerge(mbv2, t0).time, 2) for t0 in (22.3, 18.5, 15.6, 13.4)]
    assert times == [24.31, 20.44, 17.51, 15.19]
    rn = load("resnet34_synth")
    assert [round(solve_layermerge(rn, t0).time, 2) for t0 in (123.0, 103.0)] == [124.16, 103.74]
    assert solve_layermerge(rn, 103.0).children[26].kept == (25,)  # whole residual bodies pruned


def _budget(units: int, prec: int) -> float:
    budget = units / prec + 1e-9
    assert int(budget * prec) == units
    return budget


@pytest.mark.parametrize("name", SMALL)
def test_small_instances_match_brute_force(name: str) -> None:
    """Every integer budget from 0 to beyond the most expensive tiling, plus budgets.json."""
    table = load(name)
    checked = 0
    for prec in sorted({10, *(p for _, p in runs(name))}):
        every = tilings(table, prec)
        assert len(every) == 2700
        top, ranked = max(p.cost for p in every), rank(every)
        budgets = [_budget(u, prec) for u in range(0, top + 3)] if prec == 10 else []
        budgets += [t0 for t0, p in runs(name) if p == prec]
        for budget in budgets:
            best = brute_force(ranked, int(budget * prec))
            if best is None:
                with pytest.raises(InfeasibleBudget):
                    solve_layermerge(table, budget, prec)
                continue
            sol = solve_layermerge(table, budget, prec)
            assert sol.blocks == list(best.variants)
            assert (sol.objective, sol.time_units) == (best.value, best.cost)
            checked += 1
    assert checked > 50


def test_toy12_ties_needs_both_tie_rules() -> None:
    """On toy12_ties the answer changes if the rounding or the cost rule is dropped (§4.3), and
    the DP follows both; so the brute-force comparison above can tell the rules apart."""
    table = load("toy12_ties")
    no_round = no_cost = 0
    for budget, prec in runs("toy12_ties"):
        every = tilings(table, prec)
        units = int(budget * prec)
        full = brute_force(rank(every), units)
        assert full is not None
        sol = solve_layermerge(table, budget, prec)
        assert sol.blocks == list(full.variants)
        exact = brute_force(rank(every, rounding=False), units)
        if exact.variants != full.variants:
            no_round += 1
            assert round(exact.value, 7) == round(full.value, 7) and exact.value > full.value
        first = brute_force(rank(every, cost_rule=False), units)
        if first.variants != full.variants:
            no_cost += 1
            assert round(first.value, 7) == round(full.value, 7) and first.cost > full.cost
    assert no_round >= 1 and no_cost >= 1


@pytest.mark.parametrize("name", INSTANCES)
def test_infeasible_budget_reports_a_feasible_minimum(name: str) -> None:
    table = load(name)
    with pytest.raises(InfeasibleBudget) as err:
        solve_layermerge(table, 0.0)
    minimum = err.value.minimum
    assert "ms" in str(err.value) and err.value.budget == 0.0
    sol = solve_layermerge(table, minimum)
    assert sol.time_units == int(minimum * 10)
    _check_consistent(sol, table, name)
    with pytest.raises(InfeasibleBudget) as again:
        solve_layermerge(table, math.nextafter(minimum, -math.inf))
    assert again.value.minimum == minimum
    with pytest.raises(InfeasibleBudget):
        solve_layermerge(table, -5.0)
    if name in SMALL:
        assert int(minimum * 10) == min(p.cost for p in tilings(table, 10) if p.cost >= 1)


@pytest.mark.parametrize("name", SMALL)
def test_budget_beyond_every_tiling_is_clamped_exactly(name: str) -> None:
    table = load(name)
    sol = solve_layermerge(table, 40.0)
    ref = reference_optimal_patterns(40.0, 12, *paths(name), 10)
    assert ref is not None and set(sol.act_ind) == ref["act_ind"]
    assert (sol.objective, sol.time_units) == (ref["imp_sum"], ref["int_time_sum"])
    assert sol.budget_units == 400 > max(p.cost for p in tilings(table, 10)) + 1
    huge = solve_layermerge(table, 1e9)
    assert (huge.blocks, huge.budget_units) == (sol.blocks, 10**10)


# ----------------------------------------------------------------------------- tie rules


def _table(rows: list[tuple[int, int, float, float]]) -> LayerMergeTable:
    """Rows (st, end, time, importance); each keeps its last conv."""
    return LayerMergeTable(Variant(s, e, 3, 1, False, (e,), t, 0.0, h) for s, e, t, h in rows)


def _two_ways(delta: float, direct_time: float) -> LayerMergeTable:
    """Reach position 2 directly (st = 0, scanned first) or through position 1 (st = 1)."""
    return _table([(0, 1, 0.25, 0.5), (0, 2, direct_time, 1.0), (1, 2, 0.25, 0.5 + delta)])


def test_rounded_tie_keeps_cheaper_incumbent() -> None:
    sol = solve_layermerge(_two_ways(4e-8, 0.3), 1.0)  # direct 3 units, via 1: 2 + 2
    assert (sol.act_ind, sol.objective, sol.time_units) == ([2], 1.0, 3)


def test_rounding_is_to_seven_decimals() -> None:
    sol = solve_layermerge(_two_ways(3e-7, 0.3), 1.0)
    assert sol.act_ind == [1, 2] and sol.objective == 0.5 + (0.5 + 3e-7)


def test_rounded_tie_takes_strictly_cheaper_candidate() -> None:
    sol = solve_layermerge(_two_ways(-4e-8, 0.55), 1.0)  # direct 5 units, via 1: 4
    assert sol.act_ind == [1, 2] and sol.time_units == 4
    assert sol.objective == 0.5 + (0.5 - 4e-8)  # below 1.0, yet chosen


def test_exact_tie_at_equal_cost_keeps_first_scanned() -> None:
    sol = solve_layermerge(_two_ways(0.0, 0.4), 1.0)  # 4 units either way, value 1.0
    assert sol.act_ind == [2]


def test_tie_inside_a_block_keeps_latency_file_order() -> None:
    """Two variants of (0, 2) with equal cost and value: the first latency row wins, whatever
    the importance file's order (rows are joined by key, not by position)."""
    shapes = {(1, 2): (0, 2, 5, 1, False), (2,): (0, 2, 3, 1, False)}
    imp = LayerMergeImportanceTable([(shapes[k], k, 0.9) for k in ((1, 2), (2,))])
    for order in ([(1, 2), (2,)], [(2,), (1, 2)]):
        lat = LayerMergeLatencyTable([(shapes[k], None, 0.3, 0.0) for k in order])
        sol = solve_layermerge(LayerMergeTable.join(lat, imp), 1.0)
        assert sol.children[2].kept == order[0]


def test_zero_cost_tiling_never_reaches_the_budget_state() -> None:
    """The base is t = 0 … T−1: a tiling of total cost 0 is not admissible (spec §4.3)."""
    table = _table([(0, 1, 0.05, 5.0), (0, 2, 0.15, 1.0), (1, 2, 0.05, 5.0)])
    with pytest.raises(InfeasibleBudget) as err:
        solve_layermerge(table, 0.05)
    assert err.value.minimum == 0.1
    sol = solve_layermerge(table, 0.3)  # the better cost-0 tiling (value 10) stays unreachable
    assert (sol.act_ind, sol.objective, sol.time_units) == ([2], 1.0, 1)
    with pytest.raises(TableError, match="every tiling costs 0 units"):
        solve_layermerge(_table([(0, 1, 0.05, 1.0), (1, 2, 0.05, 1.0)]), 5.0)


def test_unaffordable_end_that_can_be_skipped_is_not_an_error(tmp_path: Path) -> None:
    """The original exits when t_min(end) > T for any end; here only a missing D(T, L) is."""
    table = _table([(0, 1, 5.0, 1.0), (0, 2, 0.3, 0.5), (1, 2, 5.0, 1.0)])
    sol = solve_layermerge(table, 1.0)
    assert sol.act_ind == [2] and sol.time_units == 3
    lat, imp = tmp_path / "time.csv", tmp_path / "imp.csv"
    table.latency().write_csv(lat)
    table.importance().write_csv(imp)
    assert reference_optimal_patterns(1.0, 2, lat, imp, 10) is None


def test_table_errors() -> None:
    gap = _table([(0, 1, 0.3, 1.0), (2, 3, 0.3, 1.0)])
    with pytest.raises(TableError, match=r"no tiling of positions 0\.\.3.*past position 1"):
        solve_layermerge(gap, 5.0)
    table = _two_ways(0.0, 0.3)
    with pytest.raises(TableError, match="ends beyond the chain length L=1"):
        solve_layermerge(table, 5.0, length=1)
    with pytest.raises(TableError, match=r"no tiling of positions 0\.\.3"):
        solve_layermerge(table, 5.0, length=3)
    for budget, prec in ((math.nan, 10), (1.0, 0), (1.0, math.inf)):
        with pytest.raises(ValueError, match="finite"):
            solve_layermerge(table, budget, prec)


def test_float_and_int_prec_agree() -> None:
    table = load("toy12_ties")
    a, b = solve_layermerge(table, 4.45, 100), solve_layermerge(table, 4.45, 100.0)
    assert (a.blocks, a.objective, a.time_units) == (b.blocks, b.objective, b.time_units)


def test_round7_is_pythons_round() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            rng.normal(0, 50, 20000),
            (np.arange(-2000, 2000) + 0.5) / 1e7,
            np.array([2.675e-7, 1.00000005, -3.00000015, 1e12 + 0.123456789, 0.0, -0.0]),
            rng.integers(-(10**8), 10**8, 5000) / 1e7 + 5e-8,
        ]
    )
    assert np.array_equal(round7(x), np.array([round(float(v), 7) for v in x]))
    assert round7(np.array([-np.inf, 1.0]))[0] == -np.inf
