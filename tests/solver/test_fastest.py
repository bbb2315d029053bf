"""``solve_fastest``: brute force on random chains (fastest time, then most important), and its
time fed back to DP2 as a budget is feasible at every prec."""

from __future__ import annotations

import numpy as np
import pytest
from layermerge_helpers import load
from solver_helpers import configurations, fold, random_instance, tables

from depthfx.errors import InfeasibleBudget
from depthfx.solver import (
    ImportanceTable,
    LatencyTable,
    at_smallest_budget,
    solve,
    solve_fastest,
    solve_layermerge,
)

RANDOM_TABLES = pytest.mark.filterwarnings("ignore:DP2's merge positions:RuntimeWarning")


@RANDOM_TABLES
@pytest.mark.parametrize("seed", range(40))
def test_fastest_matches_brute_force_and_is_feasible_at_any_prec(seed: int) -> None:
    rng = np.random.default_rng(5000 + seed)
    insts = [
        random_instance(rng, int(rng.integers(1, 6)), quantised=seed % 2 == 0)
        for _ in range(1 + seed % 3)
    ]
    lat, imp = tables(insts, alpha=1.0)
    opt, ext = lat.optimal(), imp.extended()
    sol = solve_fastest(lat, imp, prec=10)
    for c, inst in enumerate(insts):
        times = {b: opt.times[(c, *b)] for b in inst.blocks}
        iext = {k[1:]: v for k, v in ext.values.items() if k[0] == c}
        configs = [
            (fold([times[b[:2]] for b in blocks]), fold(values))
            for _, values, blocks in configurations(inst.length, dict.fromkeys(times, 0), iext)
        ]
        fastest = min(t for t, _ in configs)
        best = max(round(v, 7) for t, v in configs if t <= fastest * (1 + 1e-9))
        cs = sol.chains[c]
        assert cs.time == pytest.approx(fastest, rel=1e-12)
        assert round(cs.objective, 7) == best
    assert sol.time == pytest.approx(sum(cs.time for cs in sol.chains)) and sol.budget == sol.time
    assert sol.fastest_merge_pos is not None and len(sol.fastest_merge_pos) == len(insts)
    blocks = [(cs.chain, i, m) for cs in sol.chains for i, m, _, _ in cs.blocks]
    for prec in (0.5, 3, 10, 20, 1000, 12345.678):
        if sum(int(opt.times[b] * prec) for b in blocks) < 1:
            continue  # DP2 needs >= 1 unit (spec §4.2 base case): not a budget question
        again = solve(lat, imp, sol.time, prec)  # never InfeasibleBudget
        assert again.time_units <= again.budget_units
    # Nothing is faster: every configuration costs at least the fastest time.
    assert all(
        fold([opt.times[cs.chain, i, m] for i, m, _, _ in cs.blocks]) >= sol.chains[k].time * 0.999
        for k, cs in enumerate(solve(lat, imp, sol.time * 3, 10).chains)
    )


def test_fastest_keeps_the_activation_that_costs_nothing() -> None:
    """T(0,2) = T(0,1) + T(1,2): keeping the activation at 1 is as fast and more important;
    a faster merge wins over any importance."""
    lat = LatencyTable.from_entries({(0, 1): (1.0, 0), (1, 2): (1.0, 0), (0, 2): (2.0, 0)})
    scores = {(0, 1, 1, 1): -1.0, (1, 2, 1, 1): -1.0, (0, 2, 1, 1): -5.0}
    imp = ImportanceTable.from_entries(scores, norm="none")
    sol = solve_fastest(lat, imp)
    assert sol.act_pos == [1, 2] and sol.time == 2.0 and sol.objective == -2.0
    faster = LatencyTable.from_entries({(0, 1): (1.0, 0), (1, 2): (1.0, 0), (0, 2): (1.5, 0)})
    sol = solve_fastest(faster, imp)
    assert sol.act_pos == [2] and sol.merge_pos == [2] and sol.time == 1.5


def test_at_smallest_budget_solves_where_the_dp_starts_to_accept() -> None:
    table = load("toy12")
    budget, sol = at_smallest_budget(lambda b: solve_layermerge(table, b, 10))
    assert sol.budget == budget and sol.time_units == sol.budget_units
    with pytest.raises(InfeasibleBudget):
        solve_layermerge(table, np.nextafter(budget, 0.0), 10)
    with pytest.raises(AssertionError, match="accepted a zero budget"):
        at_smallest_budget(lambda b: b)
