"""The exact proxy: its prefix-split evaluation against full prepare() networks, and Δ top-1."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from importance_helpers import X1, digits, tiny_tables

from depthfx.measure.importance import entry_plan, measure_importance
from depthfx.passes.prepare import prepare

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_proxy_scores_equal_an_independent_computation() -> None:
    """The cached, prefix-split evaluation gives the same KL as full prepare() networks."""
    model, analysis, table = tiny_tables()
    x = digits()[0][1400:1528]
    with torch.no_grad():
        ref = F.log_softmax(prepare(model, entry_plan(analysis, None), (X1,)).eval()(x).double(), 1)
        for key in [(0, 0, 3, 1, 1), (0, 1, 4, 1, 1), (0, 2, 3, 0, 1), (1, 0, 1, 1, 1)]:
            out = prepare(model, entry_plan(analysis, key), (X1,)).eval()(x).double()
            kl = float((ref.exp() * (ref - F.log_softmax(out, 1))).sum(1).mean())
            assert table.scores[key] == pytest.approx(-kl, rel=1e-6, abs=1e-12)


def test_accuracy_score_in_percentage_points() -> None:
    model, analysis, _ = tiny_tables()
    x, y = digits()
    data = [(x[1400:1500], y[1400:1500])]
    table = measure_importance(model, X1, data, analysis=analysis, estimate="exact", progress=False)
    assert table.score == "val_acc"
    assert table.meta["columns"] == ["val_acc", "neg_kl", "neg_rel_mse"]
    with torch.no_grad():
        base = prepare(model, entry_plan(analysis, None), (X1,)).eval()(x[1400:1500])
        out = prepare(model, entry_plan(analysis, (0, 0, 4, 1, 1)), (X1,)).eval()(x[1400:1500])
    delta = float((out.argmax(1) == y[1400:1500]).sum() - (base.argmax(1) == y[1400:1500]).sum())
    assert table.scores[(0, 0, 4, 1, 1)] == pytest.approx(delta)  # 100 images: 1 image = 1 pp
