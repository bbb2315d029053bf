"""Solve a plan's DP for a budget in milliseconds: the part of :func:`depthfx.plan` between the
tables and the Plan, for all three methods.

The DPs run on raw table entries; the table's :class:`~depthfx.measure.prediction.LatencyModel`
maps a budget in ms to a chain budget in table units. Times are discretised into integer units
at ``prec`` units per ms, and the default ``prec`` depends on the tables only (the original's
chain time is :data:`~depthfx.solver.BUDGET_UNITS` units), never on the budget: so the smallest
budget an :class:`~depthfx.InfeasibleBudget` names is the smallest one the DP accepts at the
very discretisation it gets when that budget is passed back, as ms or as a fraction, and the
three methods are compared on one footing at any budget.

``budget="fastest"``: ICML'23 plans :func:`~depthfx.solver.solve_fastest` (the smallest real
Σ T, feasible at every ``prec``); LayerMerge and combined plan their DP at its smallest
feasible chain budget, which returns the best-objective configuration among the cheapest.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from depthfx.errors import DepthFXError, InfeasibleBudget, TableError
from depthfx.measure.layermerge_plan import VariantPlan, plan_variants
from depthfx.measure.prediction import LatencyModel, latency_model
from depthfx.plans import ChainPlan, solution_chains
from depthfx.records import Analysis
from depthfx.solver import (
    FASTEST,
    ImportanceTable,
    LatencyTable,
    LayerMergeTable,
    Solution,
    at_smallest_budget,
    solve,
    solve_fastest,
    units_per_ms,
)


@dataclass(frozen=True)
class Solved:
    """What the DP chose for one budget: the chains, their table time (not ms), the DP
    objective, the budget in ms (for ``"fastest"``: the one it needs) and extra fingerprints."""

    chains: tuple[ChainPlan, ...]
    chain_ms: float
    objective: float
    budget_ms: float
    fingerprints: dict[str, Any]


def solve_budget(
    analysis: Analysis,
    method: str,
    budget_ms: float | str,
    model_ms: LatencyModel,
    prec: float | None,
    *,
    latency: LatencyTable,
    importance: ImportanceTable | None,
    variants: Mapping[int, LayerMergeTable] | None = None,
) -> Solved:
    """Plan ``method`` under ``budget_ms`` (ms, or ``FASTEST``); an infeasible budget raises
    :class:`~depthfx.InfeasibleBudget` whose minimum and fraction are feasible passed back."""
    units_prec = default_prec(model_ms) if prec is None else prec
    if method == "icml23":
        if importance is None:
            raise DepthFXError("method='icml23' needs an importance table")
        if budget_ms == FASTEST:
            solution = solve_fastest(latency, importance, units_prec, warn=False)
            budget_ms = ms_for(model_ms, with_margin(solution.time))
        else:
            assert not isinstance(budget_ms, str)
            chain_budget = model_ms.chain_budget(budget_ms)
            try:
                solution = solve(latency, importance, chain_budget, units_prec, warn=False)
            except InfeasibleBudget as err:
                raise infeasible(model_ms, budget_ms, err.minimum) from None
        chains = solution_chains(analysis, solution)  # the fastest S for each chain's A
        return Solved(
            chains, deployed_chain_ms(latency, solution), solution.objective, budget_ms, {}
        )
    if variants is None:
        raise DepthFXError(f"method={method!r} needs each chain's LayerMerge variant tables")

    def run(chain_budget: float) -> VariantPlan:
        return plan_variants(
            analysis, variants, method, chain_budget, units_prec,
            latency=latency, importance=importance,
        )  # fmt: skip

    if budget_ms == FASTEST:
        smallest, found = at_smallest_budget(run)
        budget_ms = ms_for(model_ms, smallest)
    else:
        assert not isinstance(budget_ms, str)
        try:
            found = run(model_ms.chain_budget(budget_ms))
        except InfeasibleBudget as err:
            raise infeasible(model_ms, budget_ms, err.minimum) from None
    return Solved(found.chains, found.chain_ms, found.objective, budget_ms, found.fingerprints)


def infeasible(model_ms: LatencyModel, budget_ms: float, chain_minimum: float) -> InfeasibleBudget:
    """The error for ``budget_ms`` given the DP's smallest feasible chain budget: the minimum
    in ms (the smallest latency whose chain budget reaches it) and as a fraction of the
    original (the smallest one whose ms is at least that), with how the ms add up."""
    minimum = ms_for(model_ms, chain_minimum)
    total = model_ms.end_to_end_ms
    fraction = minimum / total
    while fraction * total < minimum:
        fraction = math.nextafter(fraction, math.inf)
    how = (
        f"{model_ms.fixed_ms:.4g} ms + {model_ms.scale:.4g} × {chain_minimum:.4g} ms of "
        "table time in the chains (calibrated)"
        if model_ms.calibrated
        else f"{model_ms.fixed_ms:.4g} ms outside the chains + {chain_minimum:.4g} ms in them"
    )
    return InfeasibleBudget(
        budget_ms,
        minimum,
        detail=(
            f" ({how}), that is a budget of at least {fraction!r} of the original's {total:.4g} ms"
        ),
        fraction=fraction,
    )


def default_prec(model_ms: LatencyModel) -> float:
    """Units per ms that give the original's chain time exactly BUDGET_UNITS integer units."""
    span = model_ms.chain_budget(model_ms.end_to_end_ms)
    if not (math.isfinite(span) and span > 0):
        raise DepthFXError(
            f"the latency model leaves {span:.4g} ms for the original's chains "
            f"({model_ms.end_to_end_ms:.4g} ms end to end, {model_ms.fixed_ms:.4g} ms fixed): "
            "pass prec= (latency units per ms) explicitly"
        )
    return units_per_ms(span)


def with_margin(chain_ms: float) -> float:
    """A chain time a relative 1e-12 above ``chain_ms``: DP2 sums ⌊prec·T⌋ of the same blocks
    in float, which may round a few ulps above ⌊prec·ΣT⌋'s operand."""
    return chain_ms * (1 + 1e-12)


def ms_for(model_ms: LatencyModel, chain_ms: float) -> float:
    """The smallest latency (ms) whose chain budget is at least ``chain_ms``."""
    ms = model_ms.predict(chain_ms)
    while model_ms.chain_budget(ms) < chain_ms:
        ms = math.nextafter(ms, math.inf)
    return ms


def deployed_chain_ms(latency: LatencyTable, solution: Solution) -> float:
    """Σ T over the merge groups the plan deploys: the fastest S for each chain's A when the
    solver checked it on the raw table (:func:`~depthfx.plans.solution_chains`)."""
    if solution.fastest_merge_pos is None:
        return solution.time
    return sum(
        latency.times[c.chain, i, j]
        for c, merges in zip(solution.chains, solution.fastest_merge_pos, strict=True)
        for i, j in zip([0, *merges], merges, strict=False)
    )


def table_latency_model(latency: LatencyTable) -> LatencyModel:
    """How the table predicts milliseconds (:func:`~depthfx.measure.prediction.latency_model`):
    the in-context calibration when the table has one, else the raw additive model.

    A negative outside part of the *raw* model means the blocks timed alone cost more than the
    whole model (per-call costs a whole model does not pay, e.g. ONNX Runtime's weight
    prepacking and layout conversions at block edges): the raw model then scales the blocks
    down in proportion, ``predicted = (end_to_end_ms / Σ singles) · Σ T``; this warns. That model
    still predicts the original exactly, so a budget fraction keeps its meaning (taking the
    outside part as 0 instead would predict the original above itself and make budgets near
    1.0 infeasible). Measured on ResNet-18/34/50 at 224² on ONNX Runtime CPU, whose blocks
    alone sum to 1.10 / 1.13 / 1.10× the whole model, for the plans at 0.9 / 0.75 / 0.6 of
    both LayerMerge methods: predicted vs measured −13 … 0% (mean −4%; −5 … +13%, mean +7%,
    with the outside part taken as 0), −32 … −6% for the fastest plans (4–5 groups, where
    per-call costs are the largest share). A calibrated fit needs neither: its intercept is
    fitted on measured plans.
    """
    try:
        model = latency_model(latency)
    except TableError as err:
        raise DepthFXError(
            f"{err}; measure the table with LatencyTable.measure, or give budget_ms for the "
            "chains of a table read from the paper's CSV format"
        ) from None
    if not model.calibrated and model.scale != 1.0:
        total = model.end_to_end_ms
        warnings.warn(
            f"the blocks timed alone sum to {total / model.scale:.4g} ms, more than the whole "
            f"model ({total:.4g} ms): per-call costs dominate at this size, so predictions scale "
            f"the blocks by {model.scale:.4g} (an in-context calibrated table fits this instead)",
            UserWarning,
            stacklevel=3,
        )
    return model


__all__ = [
    "Solved",
    "default_prec",
    "deployed_chain_ms",
    "infeasible",
    "ms_for",
    "solve_budget",
    "table_latency_model",
    "with_margin",
]
