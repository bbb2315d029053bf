"""``depthfx.plan`` budgets for all three methods: ``budget="fastest"``, and the minimum of
InfeasibleBudget passed back (as ``budget_ms`` or as the ``fraction``) succeeds at once, on given
tables with awkward floats (variants given too, so nothing is measured)."""

from __future__ import annotations

import math
import random

import pytest
import torch
from toy_models import tiny_mobilenet

import depthfx
from depthfx.errors import DepthFXError, InfeasibleBudget
from depthfx.measure.layermerge_latency import shape_key
from depthfx.measure.layermerge_plan import METHODS
from depthfx.measure.layermerge_variants import chain_variants
from depthfx.passes.analyze import analyze
from depthfx.records import Analysis
from depthfx.solver import ImportanceTable, LatencyTable, LayerMergeTable, Variant, solve_fastest

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup() -> tuple[torch.nn.Module, torch.Tensor, Analysis]:
    model = tiny_mobilenet()
    x = torch.randn(1, 3, 32, 32)
    return model, x, analyze(model, (x,), training=False)


def _tables(analysis: Analysis, seed: int, calibrated: bool) -> dict:
    """Random latencies and scores (irrational-looking floats), raw or calibrated meta, and
    variant tables: the keep-all variant is the ICML'23 block, pruned ones faster."""
    rng = random.Random(seed)
    chains = analysis.chains
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
    rows: dict[int, list[Variant]] = {c.index: [] for c in chains}
    for v in chain_variants(analysis):
        full = times[v.chain, v.st, v.end][0]
        time = full if not v.pruned else full * rng.uniform(0.2, 0.9)
        rows[v.chain].append(Variant(*shape_key(v), v.kept, time, 0.0, rng.gauss(-1.5, 1.0)))
    return {
        "latency": LatencyTable.from_entries(times, meta=meta),
        "importance": ImportanceTable.from_entries(scores),
        "variants": {c: LayerMergeTable(vs) for c, vs in rows.items()},
    }


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", range(3))
def test_infeasible_minimum_passed_back_succeeds(setup, method: str, seed: int) -> None:
    """The user's loop (plan(budget_ms=<minimum>) raising again with a minimum a few µs
    higher) cannot happen: the minimum, as ms or as a fraction, plans at once, and it is the
    minimum: one float below it is infeasible."""
    model, x, analysis = setup
    tables = {**_tables(analysis, seed, calibrated=seed % 2 == 1), "method": method}
    total = tables["latency"].meta["end_to_end_ms"]
    fastest = depthfx.plan(model, (x,), "fastest", **tables)
    raised = 0
    for budget in (0.05, 0.2, 0.3, fastest.budget_ms / total * 0.98):
        try:
            depthfx.plan(model, (x,), budget, **tables)
            continue  # feasible (the DP floors times: a little under the fastest can fit)
        except InfeasibleBudget as err:
            minimum, fraction, text = err.minimum, err.fraction, str(err)
        raised += 1
        assert repr(fraction) in text and fraction * total >= minimum
        # ICML'23's fastest is the smallest real Σ T, which the floored DP may undercut; the
        # variant DPs' fastest plan is their smallest feasible budget.
        if method == "icml23":
            assert minimum <= fastest.budget_ms
        else:
            assert minimum == fastest.budget_ms
        by_ms = depthfx.plan(model, (x,), budget_ms=minimum, **tables)
        by_fraction = depthfx.plan(model, (x,), fraction, **tables)
        assert by_ms.budget_ms == minimum and by_fraction.budget_ms >= minimum
        assert by_fraction.objective >= by_ms.objective - 1e-6
        with pytest.raises(InfeasibleBudget) as below:
            depthfx.plan(model, (x,), budget_ms=math.nextafter(minimum, 0.0), **tables)
        assert below.value.minimum == minimum
    assert raised >= 2
    # A given prec keeps its own (discretised) minimum, which holds at that prec.
    with pytest.raises(InfeasibleBudget) as err:
        depthfx.plan(model, (x,), 0.05, prec=7.3, **tables)
    depthfx.plan(model, (x,), budget_ms=err.value.minimum, prec=7.3, **tables)


@pytest.mark.parametrize("seed", range(3))
def test_combined_is_never_worse_than_either(setup, seed: int) -> None:
    """One discretisation for all methods (from the tables, not the budget): at every budget
    the combined DP's objective is at least both others' (it holds both methods' rows)."""
    model, x, analysis = setup
    tables = _tables(analysis, seed, calibrated=seed == 1)
    compared = 0
    for budget in (0.35, 0.5, 0.65, 0.8, 1.0):
        objectives = {}
        for method in METHODS:
            try:
                objectives[method] = depthfx.plan(
                    model, (x,), budget, method=method, **tables
                ).objective
            except InfeasibleBudget:
                objectives[method] = -math.inf
        assert objectives["combined"] >= max(objectives.values()) - 1e-6
        compared += objectives["combined"] > -math.inf
    assert compared >= 3


@pytest.mark.parametrize("method", ["layermerge", "combined"])
def test_variant_fastest_is_the_smallest_budget(setup, method: str) -> None:
    """``budget="fastest"`` for the variant DPs: the budget it names is feasible, one float
    less is not, and its plan prunes convs (the pruned variants are the fast ones here)."""
    model, x, analysis = setup
    tables = _tables(analysis, 5, calibrated=True)
    plan = depthfx.plan(model, (x,), "fastest", method=method, **tables)
    assert any(c.pruned for c in plan.chains)
    again = depthfx.plan(model, (x,), budget_ms=plan.budget_ms, method=method, **tables)
    assert again.chains == plan.chains and again.objective == plan.objective
    with pytest.raises(InfeasibleBudget) as err:
        depthfx.plan(
            model, (x,), budget_ms=math.nextafter(plan.budget_ms, 0.0), method=method, **tables
        )
    assert err.value.minimum == plan.budget_ms


@pytest.mark.filterwarnings("ignore:depthfx.compile merges without fine-tuning")
@pytest.mark.parametrize("method", ["layermerge", "combined"])
def test_compile_with_method_merges_exactly_with_pruned_convs(setup, method: str) -> None:
    model, x, analysis = setup
    tables = _tables(analysis, 5, calibrated=False)
    merged = depthfx.compile(model, "fastest", (x,), method=method, **tables)
    report, plan = merged.depthfx_report, merged.depthfx_plan
    pruned = sum(len(c.pruned) for c in plan.chains)
    assert pruned > 0 and report.extra["pruned_convs"] == pruned
    assert report.extra["method"] == method and report.to_dict()["method"] == method
    assert report.max_rel_error <= 1e-5
    assert report.convs_after == sum(len(c.groups()) for c in plan.chains) < 10
    prepared = depthfx.prepare(model, plan).eval()
    probe = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(merged(probe), prepared(probe), rtol=1e-4, atol=1e-5)


def test_fastest_plans_the_fastest_configuration(setup) -> None:
    model, x, analysis = setup
    tables = _tables(analysis, 11, calibrated=True)
    lat, imp = tables["latency"], tables["importance"]
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
    assert merged.depthfx_report.extra["method"] == "icml23"
    with pytest.raises(DepthFXError, match="fastest"):
        depthfx.plan(model, (x,), "fast", latency=lat, importance=imp)


@pytest.mark.parametrize("method", METHODS)
def test_blocks_alone_above_the_whole_model_still_predict_the_original(setup, method) -> None:
    """Blocks timed alone summing to more than the whole model (fixed_ms < 0) are scaled down
    in proportion: the original is predicted as measured (taking fixed_ms as 0 would predict
    it at the singles' sum), and plans keep within their budget under that model."""
    from depthfx.budget import table_latency_model

    model, x, analysis = setup
    tables = {**_tables(analysis, 0, calibrated=False), "method": method}
    meta = tables["latency"].meta
    singles = meta["end_to_end_ms"] - meta["fixed_ms"]
    meta["end_to_end_ms"], meta["fixed_ms"] = 0.9 * singles, -0.1 * singles
    with pytest.warns(UserWarning, match="scale the blocks by 0.9"):
        predicted = table_latency_model(tables["latency"])
    assert predicted.predict(singles) == pytest.approx(0.9 * singles)
    assert predicted.scale == pytest.approx(0.9) and predicted.fixed_ms == 0
    for budget in (1.0, 0.6):
        with pytest.warns(UserWarning, match="scale the blocks"):
            plan = depthfx.plan(model, (x,), budget, **tables)
        assert plan.predicted_ms <= budget * 0.9 * singles * 1.01  # floor discretisation slack
