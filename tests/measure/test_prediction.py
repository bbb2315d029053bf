"""Predictions from a latency table: a plan's merge groups, the raw and the calibrated model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from depthfx.errors import TableError
from depthfx.measure.prediction import chain_ms, latency_model, predict_ms
from depthfx.passes.analyze import analyze
from depthfx.plans import Plan, chain_plan
from depthfx.solver import LatencyTable


def test_prediction_of_a_merged_plan_sums_its_groups_entries(
    net: nn.Module, x: torch.Tensor, table: LatencyTable
) -> None:
    """A merged plan is predicted from the entries of its merge groups only, plus the model's
    outside part; checked against sums of hand-picked entries and against mutated tables."""
    analysis = analyze(net, (x,))
    (chain,) = analysis.chains
    c = chain.index
    plan = Plan.for_analysis(analysis, [chain_plan([cv.node for cv in chain.convs], {6}, {4, 6})])
    assert plan.chains[0].groups() == [(0, 4), (4, 6)]
    t = table.times
    merged = t[c, 0, 4] + t[c, 4, 6]
    singles = sum(t[c, p - 1, p] for p in range(1, 7))
    assert merged != pytest.approx(singles)  # else the checks below could not tell them apart
    assert chain_ms(table, plan) == pytest.approx(merged, rel=1e-12)

    # The raw model: the outside part plus the groups' entries (the measured outside part is
    # checked, then set: at this size it may be negative, which the next check covers).
    meta = {k: v for k, v in table.meta.items() if k != "calibration"}
    assert meta["fixed_ms"] == pytest.approx(meta["end_to_end_ms"] - singles, rel=1e-12)
    meta |= {"end_to_end_ms": singles + 0.5, "fixed_ms": 0.5}
    raw = LatencyTable.from_entries(t, meta=meta)
    assert predict_ms(raw, plan) == pytest.approx(meta["fixed_ms"] + merged, rel=1e-12)
    # Blocks alone above the whole model: scaled by end_to_end / Σ singles, original exact.
    over = LatencyTable.from_entries(
        t, meta={**meta, "end_to_end_ms": 0.8 * singles, "fixed_ms": -0.2 * singles}
    )
    assert predict_ms(over, plan) == pytest.approx(0.8 * merged, rel=1e-12)
    assert predict_ms(over, Plan(chains=())) == pytest.approx(0.8 * singles, rel=1e-12)
    assert predict_ms(raw, plan) - predict_ms(raw, Plan(chains=())) == pytest.approx(
        merged - singles, rel=1e-9
    )

    # Mutations: an entry of one of the plan's groups moves the prediction by exactly its
    # change; an entry the plan does not use (the whole chain merged) leaves it alone.
    bumped = LatencyTable.from_entries({**t, (c, 0, 4): t[c, 0, 4] + 1.0}, meta=meta)
    assert predict_ms(bumped, plan) == pytest.approx(predict_ms(raw, plan) + 1.0, rel=1e-12)
    unused = LatencyTable.from_entries({**t, (c, 0, 6): t[c, 0, 6] + 1.0}, meta=meta)
    assert predict_ms(unused, plan) == pytest.approx(predict_ms(raw, plan), rel=1e-12)

    # A calibrated table: its fit replaces the outside part and scales the groups' entries.
    fit = {"status": "fitted", "fixed_ms": 0.5, "scale": 2.0}
    calibrated = LatencyTable.from_entries(t, meta={**meta, "calibration": fit})
    assert predict_ms(calibrated, plan) == pytest.approx(0.5 + 2.0 * merged, rel=1e-12)


def test_malformed_calibration_is_refused(table: LatencyTable) -> None:
    bad = LatencyTable.from_entries(
        table.times,
        meta={**table.meta, "calibration": {"status": "fitted", "scale": -1.0, "fixed_ms": 0}},
    )
    with pytest.raises(TableError, match="scale > 0"):
        latency_model(bad)
