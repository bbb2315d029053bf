"""Plan a real model with LayerMerge's rows (``method="layermerge"``) or with both methods'
rows (``method="combined"``, spec §7.19): the part of :func:`depthfx.plan` after the budget.

Each chain's variant tables are measured here (:mod:`~depthfx.measure.layermerge_latency` in
the ICML'23 table's setting and cache, :mod:`~depthfx.measure.layermerge_importance` with the
same proxy and data), joined, and solved by :func:`~depthfx.solver.solve_combined` under the
chain budget and ``prec`` that ``plan`` computed for ICML'23, so the three methods are compared
on one footing. The result is one ChainPlan per chain with ``pruned`` set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from depthfx.errors import DepthFXError
from depthfx.measure.layermerge_importance import end_activation, measure_layermerge_importance
from depthfx.measure.layermerge_latency import measure_layermerge_latency
from depthfx.plans import ChainPlan, chain_plan
from depthfx.records import Analysis
from depthfx.solver import (
    ImportanceTable,
    LatencyTable,
    LayerMergeTable,
    solve_combined,
)

METHODS = ("icml23", "layermerge", "combined")
_LATENCY_KEYS = ("device", "threads", "cache_dir", "protocol", "backend_options", "force")
_IMPORTANCE_KEYS = ("estimate", "score", "images", "batch_size", "seed", "progress")


@dataclass(frozen=True)
class VariantPlan:
    """The chains of the plan, their predicted table time (ms) and the DP objective."""

    chains: tuple[ChainPlan, ...]
    chain_ms: float
    objective: float
    fingerprints: dict[str, Any]


def variant_tables(
    model: nn.Module,
    inputs: Sequence[torch.Tensor],
    data: Any,
    analysis: Analysis,
    *,
    backend: str = "onnxruntime",
    latency_options: Mapping[str, Any] | None = None,
    importance_options: Mapping[str, Any] | None = None,
) -> dict[int, LayerMergeTable]:
    """Each chain's joined LayerMerge table (latency and proxy importance of its variants);
    only the options both measurements understand are passed on."""
    lat = {k: v for k, v in (latency_options or {}).items() if k in _LATENCY_KEYS}
    imp = {k: v for k, v in (importance_options or {}).items() if k in _IMPORTANCE_KEYS}
    tables = {}
    for chain in analysis.chains:
        t = measure_layermerge_latency(
            model, inputs, chain=chain.index, backend=backend, analysis=analysis, **lat
        )
        timed = {(key[0], key[1], kept) for key, kept, _, _ in t.rows}
        i = measure_layermerge_importance(
            model, inputs, data, chain=chain.index, analysis=analysis, only=timed, **imp
        )
        tables[chain.index] = LayerMergeTable.join(t, i)
    return tables


def plan_variants(
    analysis: Analysis,
    tables: Mapping[int, LayerMergeTable],
    method: str,
    chain_budget: float,
    prec: float,
    *,
    latency: LatencyTable | None = None,
    importance: ImportanceTable | None = None,
) -> VariantPlan:
    """Solve ``method`` ("layermerge" or "combined", which needs the ICML'23 tables) and turn
    the solution into ChainPlans (A, S, pruned)."""
    if method not in METHODS[1:]:
        raise DepthFXError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    icml = method == "combined"
    if icml and (latency is None or importance is None):
        raise DepthFXError("method='combined' needs the ICML'23 latency and importance tables")
    linear = {
        c.index: {(st, end) for st, end in c.valid_blocks() if not end_activation(c, st, end)}
        for c in analysis.chains
    }
    solution = solve_combined(
        {c.index: tables[c.index] for c in analysis.chains},
        chain_budget,
        prec,
        latency=latency.optimal() if icml and latency is not None else None,
        importance=importance.extended() if icml and importance is not None else None,
        linear=linear,
    )
    chains = tuple(
        chain_plan([cv.node for cv in chain.convs], part.act_pos, part.merge_pos, part.pruned)
        for chain, part in zip(analysis.chains, solution.chains, strict=True)
    )
    meta = tables[analysis.chains[0].index].meta
    fps = {
        "layermerge_latency": dict(meta.get("latency", {}).get("fingerprint", {})),
        "layermerge_importance": dict(meta.get("importance", {}).get("fingerprint", {})),
    }
    return VariantPlan(chains, solution.time, solution.objective, fps)


__all__ = ["METHODS", "VariantPlan", "plan_variants", "variant_tables"]
