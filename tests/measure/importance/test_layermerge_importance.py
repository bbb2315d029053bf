"""Proxy importance of LayerMerge variants on the trained tiny CNN (digits)."""

from __future__ import annotations

import pytest
from importance_helpers import X1, digits, trained_tiny

from depthfx.measure.layermerge_importance import measure_layermerge_importance, variant_plan
from depthfx.measure.layermerge_variants import chain_variants
from depthfx.passes.analyze import analyze


@pytest.mark.parametrize("estimate", ["exact", "fisher"])
def test_variant_scores(estimate: str) -> None:
    model = trained_tiny()
    analysis = analyze(model, X1, training=False)
    x, y = digits()
    data = list(zip(x[1400:1528].split(32), y[1400:1528].split(32), strict=True))
    table = measure_layermerge_importance(
        model, X1, data, analysis=analysis, estimate=estimate, score="kl"
    )
    variants = [v for v in chain_variants(analysis) if v.chain == 0]
    expected = [((v.st, v.end), v.kept) for v in variants]
    assert [(k[:2], kept) for k, kept, _ in table.rows] == expected
    scores = {(k[0], k[1], kept): s for k, kept, s in table.rows}
    assert all(s <= 1e-9 for s in scores.values())
    # Single convs at an activated end: the unchanged network.
    assert scores[0, 1, (1,)] == pytest.approx(0.0, abs=1e-9)
    # Pruning a conv of block (1, 3) damages more than merging it whole.
    assert scores[1, 3, (2,)] < scores[1, 3, (2, 3)] or scores[1, 3, (3,)] < scores[1, 3, (2, 3)]
    plan = variant_plan(analysis, next(v for v in variants if v.pruned))
    assert plan.chains[0].pruned
