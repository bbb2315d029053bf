"""The one-call API: plan a compression under a latency budget, and compile a model with it.

``plan`` measures what is missing (latency table on the chosen backend, proxy importance table),
solves the two-stage DP and returns a :class:`~depthfx.plans.Plan`. ``compile`` is plan → prepare
→ convert without fine-tuning: exact with respect to the prepared network, but the prepared
network has fewer activations than the original, so its accuracy needs fine-tuning (the staged
API: ``plan`` → ``prepare`` → your training or ``depthfx.finetune`` → ``convert``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from depthfx.budget import solve_budget, table_latency_model
from depthfx.errors import DepthFXError
from depthfx.measure.importance.measure import default_options
from depthfx.measure.layermerge_plan import METHODS, variant_tables
from depthfx.passes.analyze import analyze
from depthfx.plans import Plan
from depthfx.records import Analysis
from depthfx.solver import FASTEST, ImportanceTable, LatencyTable, LayerMergeTable

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
    fastest configuration the tables allow (:mod:`depthfx.budget`: ICML'23's
    :func:`~depthfx.solver.solve_fastest`, the variant DPs at their smallest feasible budget;
    the latency it needs becomes the plan's ``budget_ms``). An infeasible budget raises
    :class:`~depthfx.InfeasibleBudget` whose ``minimum`` (ms) and ``fraction`` succeed when
    passed back as ``budget_ms`` / ``budget`` with the same tables, for every method. Tables
    not given are
    measured (``LatencyTable.measure`` / ``ImportanceTable.measure`` with the proxy method on
    ``data``, its entries' merge groups from the latency table; both cache their work).
    With ``data`` the proxy re-estimates each entry's BN statistics (one pass) on 16 of its
    images (:func:`~depthfx.measure.importance.measure.default_options`): it ranks entries
    much like the paper's per-entry fine-tune (README: ρ 0.85 against 0.57 for the Fisher
    proxy, ``benchmarks/accuracy.py --quick``) for less than the Fisher proxy's default table
    on MobileNetV2 224×224; ``importance_options={"bn_recalibration": False}`` (or
    ``{"estimate": "fisher"}``) keeps the Fisher proxy, ``{"images": n}`` changes the count.
    That default is for ``method="icml23"``: the LayerMerge variants are scored by the Fisher
    proxy, so ``"combined"`` scores its ICML'23 rows the same way (one scale in one DP).
    ``prec`` (latency units per ms) defaults to a value that gives the original's chain time
    2000 integer units (from the tables alone, not from the budget). ``method``:
    ``"icml23"`` (the two-stage DP), ``"layermerge"`` (LayerMerge's variants: merged blocks
    with pruned convs) or ``"combined"`` (both rows in one DP, never worse than either on the
    same tables); the last two set ``pruned`` in the plan and measure each chain's variant
    tables (:mod:`depthfx.measure.layermerge_plan`) unless ``variants`` gives them (chain
    index → :class:`~depthfx.solver.LayerMergeTable`).
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
        # combined mixes these scores with the variants', which the Fisher proxy scores: one scale
        options = (
            default_options(data, importance_options)
            if method == "icml23"
            else dict(importance_options or {})
        )
        importance = ImportanceTable.measure(
            model, inputs, data, analysis=analysis, latency=latency, **options
        )
    model_ms = table_latency_model(latency)
    positive = not isinstance(budget, str) and budget is not None and budget > 0
    if budget_ms is None and not (budget == FASTEST or positive):
        raise DepthFXError(
            f"budget must be a positive fraction of the latency or 'fastest', got {budget!r}"
        )
    if method != "icml23" and variants is None:
        variants = variant_tables(
            model, inputs, data, analysis, backend=backend,
            latency_options=latency_options, importance_options=importance_options,
        )  # fmt: skip
    wanted: float | str = FASTEST  # budget is "fastest" unless a number was given
    if budget_ms is not None:
        wanted = budget_ms
    elif not isinstance(budget, str) and budget is not None:
        wanted = budget * model_ms.end_to_end_ms
    solved = solve_budget(
        analysis, method, wanted, model_ms, prec,
        latency=latency, importance=importance, variants=variants,
    )  # fmt: skip
    return Plan(
        chains=solved.chains,
        input_shapes=tuple(tuple(x.shape) for x in inputs),
        strided=strided,
        exclude=tuple(exclude),
        budget_ms=solved.budget_ms,
        predicted_ms=model_ms.predict(solved.chain_ms),
        objective=solved.objective,
        fingerprints={
            "latency": dict(latency.meta.get("fingerprint", {})),
            "importance": dict(importance.meta.get("fingerprint", {})) if importance else {},
            **solved.fingerprints,
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
    (a :class:`CompileReport`; its ``extra`` says the method and how many convs were pruned).
    Warns once that accuracy needs fine-tuning.
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
        extra={
            "bn_recalibrated": recalibrated,
            # None for a given plan: a Plan does not record the method that chose it.
            "method": plan_options.get("method", "icml23") if plan is None else None,
            "pruned_convs": sum(len(c.pruned) for c in chosen.chains),
        },
    )
    return merged


def _as_tuple(example_inputs: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    return tuple(example_inputs)


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
