"""``depthfx.plan`` budgets: ``budget="fastest"``, and the minimum of InfeasibleBudget passed
back (as ``budget_ms`` or as the ``fraction``) succeeds, on given tables with awkward floats."""

from __future__ import annotations

import random

import pytest
import torch
from toy_models import tiny_mobilenet

import depthfx
from depthfx.errors import DepthFXError, InfeasibleBudget
from depthfx.passes.analyze import analyze
from depthfx.solver import ImportanceTable, LatencyTable, solve_fastest

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup() -> tuple[torch.nn.Module, torch.Tensor, list]:
    model = tiny_mobilenet()
    x = torch.randn(1, 3, 32, 32)
    return model, x, analyze(model, (x,), training=False).chains


def _tables(chains: list, seed: int, calibrated: bool) -> tuple[LatencyTable, ImportanceTable]:
    """Random latencies and scores (irrational-looking floats), raw or calibrated meta."""
    rng = random.Random(seed)
    times = {
        (c.index, i, j): (rng.uniform(0.01, 0.3) * (j - i) ** 0.7, 0.0)
        for c in chains
        for i, j in c.valid_blocks()
    }
    singles = sum(t for (_, i, j), (t, _) in times.items() if j - i == 1)
    meta = {"end_to_end_ms": singles + 0.137, "fixed_ms": 0.137}
    if calibrated:
        meta["calibration"] = {"status": "fitted", "fixed_ms": 0.0731, "scale": 1.0913}
    scores = {(c.index, *e): rng.gauss(-1.0, 1.0) for c in chains for e in c.extended_blocks()}
    return LatencyTable.from_entries(times, meta=meta), ImportanceTable.from_entries(scores)


@pytest.mark.parametrize("seed", range(4))
def test_infeasible_minimum_passed_back_succeeds(setup, seed: int) -> None:
    """The user's loop (plan(budget_ms=<minimum>) raising again with a minimum a few µs
    higher) cannot happen: the minimum, as ms or as a fraction, plans at once."""
    model, x, chains = setup
    lat, imp = _tables(chains, seed, calibrated=seed % 2 == 1)
    tables = {"latency": lat, "importance": imp}
    fastest = depthfx.plan(model, (x,), "fastest", **tables)
    raised = 0
    for budget in (0.05, 0.2, 0.3, fastest.budget_ms / lat.meta["end_to_end_ms"] * 0.98):
        try:
            depthfx.plan(model, (x,), budget, **tables)
            continue  # feasible (the DP floors times: a little under the fastest can fit)
        except InfeasibleBudget as err:
            minimum, fraction, text = err.minimum, err.fraction, str(err)
        raised += 1
        assert minimum == fastest.budget_ms and repr(fraction) in text
        by_ms = depthfx.plan(model, (x,), budget_ms=minimum, **tables)
        by_fraction = depthfx.plan(model, (x,), fraction, **tables)
        assert by_ms.predicted_ms <= minimum * (1 + 1e-9)
        assert by_fraction.budget_ms >= minimum
    assert raised >= 2
    # A given prec keeps its own (discretised) minimum, which holds at that prec.
    with pytest.raises(InfeasibleBudget) as err:
        depthfx.plan(model, (x,), 0.05, prec=7.3, **tables)
    depthfx.plan(model, (x,), budget_ms=err.value.minimum, prec=7.3, **tables)


def test_fastest_plans_the_fastest_configuration(setup) -> None:
    model, x, chains = setup
    lat, imp = _tables(chains, 11, calibrated=True)
    plan = depthfx.plan(model, (x,), "fastest", latency=lat, importance=imp)
    cal = lat.meta["calibration"]
    best = solve_fastest(lat, imp).time
    assert plan.budget_ms == pytest.approx(cal["fixed_ms"] + cal["scale"] * best, rel=1e-9)
    assert plan.predicted_ms <= plan.budget_ms * (1 + 1e-9)
    # No budget gives a faster plan: a larger one may only be slower or as fast.
    for budget in (0.5, 0.8, 1.0):
        try:
            other = depthfx.plan(model, (x,), budget, latency=lat, importance=imp)
        except InfeasibleBudget:
            continue
        assert other.predicted_ms >= plan.predicted_ms * (1 - 1e-9)
    merged = depthfx.compile(model, "fastest", (x,), latency=lat, importance=imp)
    assert merged.depthfx_plan.chains == plan.chains
    with pytest.raises(DepthFXError, match="fastest"):
        depthfx.plan(model, (x,), "fast", latency=lat, importance=imp)
