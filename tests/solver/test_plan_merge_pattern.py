"""``depthfx.plan`` deploys the fastest S ⊇ A on the raw table, not DP2's S.

The paper's DP1 splits a block only where every prefix is itself a valid block (spec §7.16).
In a chain with a residual (1, 3) the block (0, 3) can then only split as (0, 1) + (1, 3), never
into its three single convs, because (0, 2) cuts the residual. When DP2 picks (0, 3) for its
importance, its S keeps the merged block even where the single convs are faster.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import depthfx
from depthfx.passes.analyze import analyze
from depthfx.solver import ImportanceTable, LatencyTable, solve
from depthfx.testing import TinyResidual

FIXED_MS = 1.0
SINGLE_MS, MERGED_MS, TAIL_MS = 0.5, 2.0, 5.0  # T(p-1, p), T(0, 3), T(1, 3)


def test_plan_uses_the_fastest_merge_pattern_where_dp1_cannot_split() -> None:
    torch.manual_seed(0)
    model, x = TinyResidual().eval(), torch.zeros(1, 3, 16, 16)
    analysis = analyze(model, x, training=False)
    (chain,) = analysis.chains
    assert [(r.src, r.dst) for r in chain.residuals] == [(1, 3)]
    assert (0, 2) not in chain.valid_blocks()
    times = {}
    for i, j in chain.valid_blocks():
        times[0, i, j] = {1: SINGLE_MS}.get(j - i, 9.0)
    times[0, 0, 3], times[0, 1, 3] = MERGED_MS, TAIL_MS
    latency = LatencyTable.from_entries(
        times, meta={"end_to_end_ms": FIXED_MS + 3 * SINGLE_MS, "fixed_ms": FIXED_MS}
    )
    # Removing the activations of the whole block costs nothing; anything else costs 1.
    scores = {(0, *blk): (0.0 if blk[:2] == (0, 3) else -1.0) for blk in chain.extended_blocks()}
    importance = ImportanceTable.from_entries(
        scores, norm="none", default_acts={0: chain.default_acts}
    )
    budget_ms = FIXED_MS + MERGED_MS + 0.25

    with pytest.warns(RuntimeWarning, match="merge positions differ"):
        paper = solve(latency, importance, budget=budget_ms - FIXED_MS, prec=100)
    assert paper.chains[0].merge_pos == [3]  # DP1 kept the merged block (2.0 ms)
    assert paper.fastest_merge_pos == [[1, 2, 3]]  # its single convs take 1.5 ms

    with warnings.catch_warnings():  # the plan deploys the merge DP's S: nothing to warn of
        warnings.simplefilter("error", RuntimeWarning)
        plan = depthfx.plan(
            model, x, budget_ms=budget_ms, latency=latency, importance=importance, prec=100
        )
    assert list(plan.chains[0].merge_pos) == [1, 2, 3]
    assert list(plan.chains[0].act_pos) == paper.chains[0].act_pos
    assert plan.predicted_ms == pytest.approx(FIXED_MS + 3 * SINGLE_MS, abs=1e-12)
