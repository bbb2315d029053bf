"""Predict a plan's latency from a latency table (spec §2.3, notes §5).

A plan's *chain time* is the raw table time of its merge groups, :func:`chain_ms`; the table's
:class:`LatencyModel` (:func:`latency_model`) turns it into milliseconds:

    raw:        predicted(plan) = fixed_ms + Σ_chains Σ_{merge groups (i, j)} T(i, j)
                fixed_ms        = end_to_end_ms − Σ_chains Σ_p T(p − 1, p)
    calibrated: predicted(plan) = c_fixed + scale · Σ_chains Σ_{merge groups (i, j)} T(i, j)

(a raw table with ``fixed_ms`` < 0 — blocks alone cost more than the whole model — predicts
``end_to_end_ms / Σ singles · Σ T`` instead). All predict the original (single convs
everywhere) as its measured ``end_to_end_ms``, so a budget fraction of the original means what
it says. The calibrated model holds when the table
has a fit in ``meta["calibration"]`` (:mod:`depthfx.measure.calibration`), the raw one
otherwise. Because scale > 0, ``c_fixed + scale·ΣT ≤ budget`` ⇔ ``ΣT ≤ (budget −
c_fixed)/scale`` (:meth:`LatencyModel.chain_budget`): the DP runs on the raw entries with a
transformed budget.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from depthfx.errors import TableError
from depthfx.plans import Plan
from depthfx.solver import LatencyTable


def chain_indices(table: LatencyTable) -> dict[tuple[str, ...], int]:
    """Table chain index by the chain's conv node names (from ``meta["chains"]``)."""
    chains = table.meta.get("chains")
    if not chains:
        raise TableError(
            f"{table.source}: the table does not record its chains (meta['chains']); it was "
            "not measured by depthfx.LatencyTable.measure"
        )
    return {tuple(c["convs"]): int(c["index"]) for c in chains}


def predict_ms(table: LatencyTable, plan: Plan) -> float:
    """The table's prediction for ``plan`` (:func:`latency_model`: calibrated when the table
    has a fit, else raw); chains the plan leaves out count with their original configuration."""
    return latency_model(table).predict(chain_ms(table, plan))


def chain_ms(table: LatencyTable, plan: Plan) -> float:
    """Σ_chains Σ_{merge groups (i, j)} T(i, j): the raw table time of ``plan``'s chains;
    chains the plan leaves out count with their original configuration (single convs)."""
    index = chain_indices(table)
    groups: dict[int, list[tuple[int, int]]] = {
        c: [(p - 1, p) for p in range(1, table.lengths[c] + 1)] for c in index.values()
    }
    for cp in plan.chains:
        if cp.convs not in index:
            raise TableError(
                f"{table.source}: the plan's chain starting at {cp.convs[0]!r} is not in the "
                "table (was it measured for another model or strided/exclude setting?)"
            )
        groups[index[cp.convs]] = cp.groups()
    total = 0.0
    for c, blocks in groups.items():
        for i, j in blocks:
            if (c, i, j) not in table.times:
                raise TableError(f"{table.source}: no entry for block ({c}, {i}, {j})")
            total += table.times[c, i, j]
    if not math.isfinite(total):
        raise TableError(f"{table.source}: predicted latency is not finite")
    return total


@dataclass(frozen=True)
class LatencyModel:
    """How a table turns the raw time of a plan's chains into milliseconds:
    ``fixed_ms + scale · chain_ms`` (module doc). ``end_to_end_ms`` is the original's measured
    latency that a budget fraction refers to; the model predicts exactly that for it."""

    end_to_end_ms: float
    fixed_ms: float
    scale: float
    calibrated: bool

    def predict(self, chain_ms: float) -> float:
        return self.fixed_ms + self.scale * chain_ms

    def chain_budget(self, budget_ms: float) -> float:
        """The raw chain time (table units) that a latency of ``budget_ms`` allows."""
        return (budget_ms - self.fixed_ms) / self.scale


def latency_model(table: LatencyTable) -> LatencyModel:
    """The calibrated model when ``meta["calibration"]`` holds a fit, else the raw one
    (scale 1, ``meta["fixed_ms"]``); a raw table whose blocks alone sum to more than the whole
    model (``fixed_ms`` < 0) scales them by end_to_end / Σ singles instead, which still
    predicts the original exactly (:func:`depthfx.budget.table_latency_model` says why)."""
    meta = table.meta
    cal = meta.get("calibration")
    if isinstance(cal, Mapping) and cal.get("status") == "fitted":
        try:
            model = LatencyModel(
                float(meta["end_to_end_ms"]), float(cal["fixed_ms"]), float(cal["scale"]), True
            )
        except (KeyError, TypeError, ValueError) as err:
            raise TableError(f"{table.source}: malformed meta['calibration'] ({err!r})") from None
        if not (math.isfinite(model.fixed_ms) and math.isfinite(model.scale) and model.scale > 0):
            raise TableError(
                f"{table.source}: meta['calibration'] has scale={model.scale!r}, "
                f"fixed_ms={model.fixed_ms!r}; expected a finite fit with scale > 0"
            )
        return model
    if "fixed_ms" not in meta or "end_to_end_ms" not in meta:
        raise TableError(
            f"{table.source}: no end_to_end_ms/fixed_ms in meta (measured without end_to_end, "
            "or read from the paper's CSV format)"
        )
    total, fixed = float(meta["end_to_end_ms"]), float(meta["fixed_ms"])
    if fixed < 0:  # the blocks alone cost more than the whole model: scale them down
        return LatencyModel(total, 0.0, total / (total - fixed), False)
    return LatencyModel(total, fixed, 1.0, False)
