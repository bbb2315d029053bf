"""The combined DP (spec §7.19) against brute force, and never below either method."""

from __future__ import annotations

import itertools
import random

import pytest

from depthfx.errors import InfeasibleBudget
from depthfx.solver import (
    ExtendedImportanceTable,
    LatencyTable,
    LayerMergeTable,
    Variant,
    solve,
    solve_layermerge,
)
from depthfx.solver.combined_dp import solve_combined

L, PREC = 5, 10


def instance(seed: int) -> tuple:
    rng = random.Random(seed)
    blocks = [(i, m) for i in range(L) for m in range(i + 1, L + 1)]
    raw = LatencyTable.from_entries({(0, i, m): rng.uniform(0.2, 1.0) * (m - i) for i, m in blocks})
    opt = raw.optimal()
    values, splits = {}, {}
    for i, m in blocks:
        for j, a in itertools.product((0, 1) if i else (1,), (0, 1)):
            values[0, i, m, j, a] = 0.0 if m - i == 1 and a else rng.uniform(-1.0, 0.0)
            splits[0, i, m, j, a] = (i, m)
    ext = ExtendedImportanceTable(values, splits)
    # Keep-all variants are the ICML'23 blocks (same time, same importance as (i, m, 1, 1));
    # pruned ones are faster and score lower, as measured rows would.
    variants = []
    for i, m in blocks:
        full = tuple(range(i + 1, m + 1))
        subsets = [s for n in range(1, m - i) for s in itertools.combinations(full, n)]
        variants.append(
            Variant(i, m, 3, 1, False, full, raw.times[0, i, m], 0.0, values[0, i, m, 1, 1])
        )
        for kept in rng.sample(subsets, min(2, len(subsets))):
            t = raw.times[0, i, m] * rng.uniform(0.3, 1.0)
            h = values[0, i, m, 1, 1] - rng.uniform(0.0, 0.5)
            variants.append(Variant(i, m, 3, 1, False, kept, t, 0.0, h))
    return opt, ext, LayerMergeTable(variants)


def brute(opt, ext, lm, T: int) -> float:
    """Best value over all paths of cost 1 … T from (0, 1) to (L, ·)."""
    rows = [
        (i, j, m, a, int(opt.times[0, i, m] * PREC), h) for (_, i, m, j, a), h in ext.values.items()
    ] + [(v.st, j, v.end, 1, int(v.time * PREC), v.importance) for v in lm.variants for j in (0, 1)]
    best = -float("inf")

    def walk(m: int, a: int, cost: int, value: float) -> None:
        nonlocal best
        if m == L:
            if 1 <= cost <= T:
                best = max(best, value)
            return
        for i, j, e, f, g, h in rows:
            if i == m and j == a and cost + g <= T:
                walk(e, f, cost + g, value + h)

    walk(0, 1, 0, 0.0)
    return best


@pytest.mark.parametrize("seed", range(4))
def test_matches_brute_force_and_dominates_both(seed: int) -> None:
    opt, ext, lm = instance(seed)
    full = sum(opt.times[0, p - 1, p] for p in range(1, L + 1))
    for frac in (0.3, 0.5, 0.7, 0.9):
        budget = frac * full
        try:
            sol = solve_combined({0: lm}, budget, PREC, latency=opt, importance=ext)
        except InfeasibleBudget:
            assert brute(opt, ext, lm, int(budget * PREC)) == -float("inf")
            continue
        assert sol.objective == pytest.approx(brute(opt, ext, lm, int(budget * PREC)), abs=1e-6)
        assert sol.time_units <= int(budget * PREC) and sol.chains[0].merge_pos[-1] == L
        for other in (solve, solve_layermerge):
            try:
                theirs = (
                    other(opt, ext, budget, PREC) if other is solve else other(lm, budget, PREC)
                )
            except InfeasibleBudget:
                continue
            assert sol.objective >= theirs.objective - 1e-9


def test_infeasible_budget_reports_the_minimum() -> None:
    opt, ext, lm = instance(0)
    with pytest.raises(InfeasibleBudget) as err:
        solve_combined({0: lm}, 0.05, PREC, latency=opt, importance=ext)
    solve_combined({0: lm}, err.value.minimum, PREC, latency=opt, importance=ext)


def test_strictly_better_than_both_somewhere() -> None:
    opt, ext, lm = instance(2)
    budget = 0.3 * sum(opt.times[0, p - 1, p] for p in range(1, L + 1))
    with pytest.raises(InfeasibleBudget):
        solve(opt, ext, budget, PREC)
    sol = solve_combined({0: lm}, budget, PREC, latency=opt, importance=ext)
    assert sol.objective > solve_layermerge(lm, budget, PREC).objective + 0.1
    assert {p.variant is None for p in sol.chains[0].pieces} == {
        True,
        False,
    }  # mixes both kinds of row


@pytest.mark.parametrize("seed", range(3))
def test_layermerge_rows_alone_are_layermerges_dp(seed: int) -> None:
    _, _, lm = instance(seed)
    for budget in (1.0, 1.5, 2.5):
        try:
            theirs = solve_layermerge(lm, budget, PREC)
        except InfeasibleBudget:
            with pytest.raises(InfeasibleBudget):
                solve_combined({0: lm}, budget, PREC)
            continue
        ours = solve_combined({0: lm}, budget, PREC)
        assert ours.objective == theirs.objective and ours.time_units == theirs.time_units
        assert ours.chains[0].merge_pos == theirs.act_ind == ours.chains[0].act_pos
        assert ours.chains[0].pruned == theirs.pruned
