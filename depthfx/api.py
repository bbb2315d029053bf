"""The one-call API: plan a compression under a latency budget, and compile a model with it.

``plan`` measures what is missing (latency table on the chosen backend, proxy importance table),
solves the two-stage DP and returns a :class:`~depthfx.plans.Plan`. ``compile`` is plan → prepare
→ convert without fine-tuning: exact with respect to the prepared network, but the prepared
network has fewer activations than the original, so its accuracy needs fine-tuning (the staged
API: ``plan`` → ``prepare`` → your training or ``depthfx.finetune`` → ``convert``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import fx, nn

from depthfx.errors import DepthFXError, InfeasibleBudget, TableError
from depthfx.measure.layermerge_plan import METHODS, plan_variants, variant_tables
from depthfx.measure.prediction import LatencyModel, latency_model
from depthfx.passes.analyze import analyze
from depthfx.plans import Plan, solution_chains
from depthfx.records import Analysis
from depthfx.solver import (
    BUDGET_UNITS,
    FASTEST,
    ImportanceTable,
    LatencyTable,
    LayerMergeTable,
    Solution,
    solve,
    solve_fastest,
)

#: Discretisation target: the chain budget spans about this many integer latency units.

_warned_about_finetuning = False


def plan(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    budget: float | str | None = 0.6,
    *,
    budget_ms: float | None = None,
    latency: LatencyTable | None = None,
    importance: ImportanceTable | None = None,
    backend: str = "onnxruntime",
    data: Any = None,
    strided: str = "general",
    exclude: Sequence[str] = (),
    prec: float | None = None,
    latency_options: dict[str, Any] | None = None,
    importance_options: dict[str, Any] | None = None,
    method: str = "icml23",
    variants: Mapping[int, LayerMergeTable] | None = None,
) -> Plan:
    """Choose A and S for every chain of ``model`` so its predicted latency fits the budget.

    ``budget`` is a fraction of the original model's end-to-end latency measured on
    ``backend``; ``budget_ms`` gives it in milliseconds instead. ``budget="fastest"`` plans the
    fastest configuration the tables allow (:func:`~depthfx.solver.solve_fastest`; its
    predicted latency becomes the plan's ``budget_ms``). An infeasible budget raises
    :class:`~depthfx.InfeasibleBudget` whose ``minimum`` (ms) and ``fraction`` succeed when
    passed back as ``budget_ms`` / ``budget`` with the same tables. Tables not given are
    measured (``LatencyTable.measure`` / ``ImportanceTable.measure`` with the proxy method on
    ``data``, its entries' merge groups from the latency table; both cache their work).
    ``importance_options={"bn_recalibration": True}`` makes the proxy re-estimate each entry's
    BN statistics on ``data``: it then ranks entries much like the paper's per-entry fine-tune
    (ρ 0.97 against 0.43 for the Fisher proxy on 12 entries of a small Fashion-MNIST CNN,
    ``benchmarks/accuracy.py --quick``), but it runs every entry's whole network, so it is
    opt-in until its cost on large models is measured.
    ``prec`` (latency units per ms) defaults to a value that gives the chain budget about 2000
    integer units. ``method``: ``"icml23"`` (the two-stage DP), ``"layermerge"`` (LayerMerge's
    variants: merged blocks with pruned convs) or ``"combined"`` (both rows in one DP, never
    worse than either on the same tables); the last two set ``pruned`` in the plan and measure
    each chain's variant tables (:mod:`depthfx.measure.layermerge_plan`) unless ``variants``
    gives them (chain index → :class:`~depthfx.solver.LayerMergeTable`).
    """
    if method not in METHODS:
        raise DepthFXError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    inputs = _as_tuple(example_inputs)
    analysis = analyze(model, inputs, strided=strided, exclude=exclude, training=False)
    if latency is None:
        latency = LatencyTable.measure(
            model, inputs, backend=backend, analysis=analysis, **(latency_options or {})
        )
    if importance is None and method != "layermerge":
        importance = ImportanceTable.measure(
            model, inputs, data, analysis=analysis, latency=latency, **(importance_options or {})
        )
    model_ms = _latency_budget_parts(latency)
    total_ms = model_ms.end_to_end_ms
    positive = not isinstance(budget, str) and budget is not None and budget > 0
    if budget_ms is None and not (budget == FASTEST or positive):
        raise DepthFXError(
            f"budget must be a positive fraction of the latency or 'fastest', got {budget!r}"
        )
    extra: dict[str, Any] = {}
    if method == "icml23":
        assert importance is not None
        if budget == FASTEST and budget_ms is None:
            solution = solve_fastest(
                latency, importance, prec or _prec(model_ms.chain_budget(total_ms)), warn=False
            )
            budget_ms = _ms_for(model_ms, _with_margin(solution.time))
        else:
            budget_ms = budget * total_ms if budget_ms is None else budget_ms
            solution = _solve(latency, importance, model_ms, budget_ms, prec)
        chains = solution_chains(analysis, solution)  # the fastest S for each chain's A
        chain_ms, objective = _deployed_chain_ms(latency, solution), solution.objective
    else:
        if budget == FASTEST and budget_ms is None:
            raise DepthFXError(
                f"budget='fastest' is implemented for method='icml23' only; with "
                f"method={method!r} pass a budget (InfeasibleBudget names the smallest one)"
            )
        budget_ms = budget * total_ms if budget_ms is None else budget_ms
        # The DP runs on the raw table entries; the (calibrated) model maps ms to table units.
        chain_budget = model_ms.chain_budget(budget_ms)
        span = chain_budget if chain_budget > 0 else model_ms.chain_budget(total_ms)
        units_prec = prec if prec is not None else _prec(span)
        tables = variants or variant_tables(
            model, inputs, data, analysis, backend=backend,
            latency_options=latency_options, importance_options=importance_options,
        )  # fmt: skip
        try:
            found = plan_variants(
                analysis, tables, method, chain_budget, units_prec,
                latency=latency, importance=importance,
            )  # fmt: skip
        except InfeasibleBudget as err:
            fastest = model_ms.predict(err.minimum)
            how = (
                f"{model_ms.fixed_ms:.4g} ms + {model_ms.scale:.4g} × {err.minimum:.4g} ms of "
                "table time in the chains (calibrated)"
                if model_ms.calibrated
                else f"{model_ms.fixed_ms:.4g} ms outside the chains + {err.minimum:.4g} ms in them"
            )
            raise InfeasibleBudget(
                budget_ms,
                fastest,
                detail=(
                    f" ({how}), that is a budget of at least {fastest / total_ms:.3f} of the "
                    f"original's {total_ms:.4g} ms"
                ),
            ) from None
        chains, chain_ms, objective = found.chains, found.chain_ms, found.objective
        extra = found.fingerprints
    return Plan(
        chains=chains,
        input_shapes=tuple(tuple(x.shape) for x in inputs),
        strided=strided,
        exclude=tuple(exclude),
        budget_ms=budget_ms,
        predicted_ms=model_ms.predict(chain_ms),
        objective=objective,
        fingerprints={
            "latency": dict(latency.meta.get("fingerprint", {})),
            "importance": dict(importance.meta.get("fingerprint", {})) if importance else {},
            **extra,
        },
    )


@dataclass
class CompileReport:
    """What ``compile`` did: conv counts, activations removed, exactness, predicted latency."""

    convs_before: int
    convs_after: int
    activations_before: int
    activations_after: int
    max_abs_error: float
    max_rel_error: float
    predicted_ms: float | None
    budget_ms: float | None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "convs_before": self.convs_before,
            "convs_after": self.convs_after,
            "activations_before": self.activations_before,
            "activations_after": self.activations_after,
            "max_abs_error": self.max_abs_error,
            "max_rel_error": self.max_rel_error,
            "predicted_ms": self.predicted_ms,
            "budget_ms": self.budget_ms,
            **self.extra,
        }


def compile(
    model: nn.Module,
    budget: float | str | None = 0.6,
    example_inputs: torch.Tensor | Sequence[torch.Tensor] | None = None,
    *,
    plan: Plan | None = None,
    bn_recalibration: bool = True,
    **plan_options: Any,
) -> fx.GraphModule:
    """plan → prepare → convert in one call, without fine-tuning.

    With ``data`` (a plan option: the proxy's data) and ``bn_recalibration``, the prepared
    network's BN statistics are re-estimated on it before the merge
    (:func:`~depthfx.measure.bn_recalibration.recalibrate_bn`): removed activations shift the
    statistics BN sees, and re-estimating them recovers much of the accuracy at no training cost.
    Returns the merged GraphModule with ``.depthfx_plan`` (the Plan) and ``.depthfx_report``
    (a :class:`CompileReport`). Warns once that accuracy needs fine-tuning.
    """
    from depthfx.measure.bn_recalibration import recalibrate_bn
    from depthfx.passes.convert import convert, count_convs
    from depthfx.passes.prepare import prepare
    from depthfx.passes.verify import compare_outputs

    if example_inputs is None:
        raise DepthFXError("compile needs example_inputs (a tensor or a tuple of tensors)")
    inputs = _as_tuple(example_inputs)
    chosen = plan if plan is not None else globals()["plan"](model, inputs, budget, **plan_options)
    _warn_finetuning()
    prepared = prepare(model, chosen, inputs)
    data = plan_options.get("data")
    recalibrated = data is not None and bn_recalibration
    if recalibrated:
        recalibrate_bn(prepared, data)
    merged = convert(prepared, chosen, inputs)
    errors = compare_outputs(prepared, merged, inputs, check=False)
    original = analyze(model, inputs, strided=chosen.strided, exclude=chosen.exclude)
    merged.depthfx_plan = chosen
    merged.depthfx_report = CompileReport(
        convs_before=count_convs(original.graph_module),
        convs_after=count_convs(merged),
        activations_before=_activation_count(original),
        activations_after=sum(len(c.act_pos) for c in chosen.chains)
        + _activations_outside_plan(original, chosen),
        max_abs_error=errors.max_abs,
        max_rel_error=errors.max_rel,
        predicted_ms=chosen.predicted_ms,
        budget_ms=chosen.budget_ms,
        extra={"bn_recalibrated": recalibrated},
    )
    return merged


def _as_tuple(example_inputs: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    return tuple(example_inputs)


def _solve(
    latency: LatencyTable,
    importance: ImportanceTable,
    model_ms: LatencyModel,
    budget_ms: float,
    prec: float | None,
) -> Solution:
    """DP2 on the raw table entries for a budget in ms (the latency model maps ms to table
    units); an infeasible budget names a minimum that is feasible when passed back."""
    chain_budget = model_ms.chain_budget(budget_ms)
    units_prec = prec
    if units_prec is None:  # BUDGET_UNITS integer units for the chain budget (or the chains)
        span = chain_budget if chain_budget > 0 else model_ms.chain_budget(model_ms.end_to_end_ms)
        units_prec = _prec(span)
    try:
        return solve(latency, importance, chain_budget, units_prec, warn=False)
    except InfeasibleBudget as err:
        # The default prec follows the budget, so DP2's smallest feasible budget at this prec
        # can be infeasible at its own prec: the fastest configuration's time (a little more,
        # for rounding) is feasible at every prec. A given prec stays, so its own minimum holds.
        if prec is None:
            needed = _with_margin(solve_fastest(latency, importance, units_prec, warn=False).time)
        else:
            needed = err.minimum
        minimum = _ms_for(model_ms, needed)
        fraction = minimum / model_ms.end_to_end_ms
        while fraction * model_ms.end_to_end_ms < minimum:
            fraction = math.nextafter(fraction, math.inf)
        how = (
            f"{model_ms.fixed_ms:.4g} ms + {model_ms.scale:.4g} × {needed:.4g} ms of "
            "table time in the chains (calibrated)"
            if model_ms.calibrated
            else f"{model_ms.fixed_ms:.4g} ms outside the chains + {needed:.4g} ms in them"
        )
        raise InfeasibleBudget(
            budget_ms,
            minimum,
            detail=(
                f" ({how}), that is a budget of at least {fraction!r} of the original's "
                f"{model_ms.end_to_end_ms:.4g} ms"
            ),
            fraction=fraction,
        ) from None


def _prec(span: float) -> float:
    """Units per ms that give ``span`` exactly BUDGET_UNITS integer units (int() truncates a
    product that rounds an ulp low, so the quotient is nudged up until it does not)."""
    prec = BUDGET_UNITS / span
    while int(span * prec) < BUDGET_UNITS:
        prec = math.nextafter(prec, math.inf)
    return prec


def _with_margin(chain_ms: float) -> float:
    """A chain time a relative 1e-12 above ``chain_ms``: DP2 sums ⌊prec·T⌋ of the same blocks
    in float, which may round a few ulps above ⌊prec·ΣT⌋'s operand."""
    return chain_ms * (1 + 1e-12)


def _ms_for(model_ms: LatencyModel, chain_ms: float) -> float:
    """The smallest latency (ms) whose chain budget is at least ``chain_ms``."""
    ms = model_ms.predict(chain_ms)
    while model_ms.chain_budget(ms) < chain_ms:
        ms = math.nextafter(ms, math.inf)
    return ms


def _deployed_chain_ms(latency: LatencyTable, solution: Solution) -> float:
    """Σ T over the merge groups the plan deploys: the fastest S for each chain's A when the
    solver checked it on the raw table (:func:`~depthfx.plans.solution_chains`)."""
    if solution.fastest_merge_pos is None:
        return solution.time
    return sum(
        latency.times[c.chain, i, j]
        for c, merges in zip(solution.chains, solution.fastest_merge_pos, strict=True)
        for i, j in zip([0, *merges], merges, strict=False)
    )


def _latency_budget_parts(latency: LatencyTable) -> LatencyModel:
    """How the table predicts milliseconds (:func:`~depthfx.measure.prediction.latency_model`):
    the in-context calibration when the table has one, else the raw additive model.

    A negative outside part of the *raw* model means the blocks timed alone cost more than the
    whole model: it is taken as 0, with a warning, so that predictions err on the slow side
    instead of promising the impossible (a calibrated fit needs no such clamp: its intercept
    is fitted on measured plans).
    """
    try:
        model = latency_model(latency)
    except TableError as err:
        raise DepthFXError(
            f"{err}; measure the table with LatencyTable.measure, or give budget_ms for the "
            "chains of a table read from the paper's CSV format"
        ) from None
    if not model.calibrated and model.fixed_ms < 0:
        total = model.end_to_end_ms
        warnings.warn(
            f"the blocks timed alone sum to {total - model.fixed_ms:.4g} ms, more than the whole "
            f"model ({total:.4g} ms): per-call costs dominate at this size, so predicted "
            "latencies will be pessimistic (an in-context calibrated table avoids this)",
            UserWarning,
            stacklevel=3,
        )
        model = replace(model, fixed_ms=0.0)
    return model


def _warn_finetuning() -> None:
    global _warned_about_finetuning
    if not _warned_about_finetuning:
        _warned_about_finetuning = True
        warnings.warn(
            "depthfx.compile merges without fine-tuning: the result computes exactly what the "
            "prepared network computes, but removing activations costs accuracy until it is "
            "fine-tuned. For accuracy use the staged API: depthfx.plan → depthfx.prepare → "
            "train (e.g. depthfx.finetune) → depthfx.convert.",
            UserWarning,
            stacklevel=3,
        )


def _activation_count(analysis: Analysis) -> int:
    return sum(len(c.activations) for c in analysis.chains)


def _activations_outside_plan(analysis: Analysis, chosen: Plan) -> int:
    planned = {tuple(c.convs) for c in chosen.chains}
    return sum(
        len(chain.activations)
        for chain in analysis.chains
        if tuple(c.node for c in chain.convs) not in planned
    )
