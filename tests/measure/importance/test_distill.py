"""The ``distill`` importance method on the trained tiny CNN and scikit-learn digits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from importance_helpers import X1, digits, trained_tiny, unchanged

from depthfx.errors import DepthFXError
from depthfx.measure.importance import measure_importance
from depthfx.passes.analyze import analyze

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_distill_scores_unchanged_entries_best_and_resumes(tmp_path: Path) -> None:
    model = trained_tiny()
    analysis = analyze(model, X1, training=False)
    x, y = digits()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    options = {
        "method": "distill", "train_data": (x[:1400], y[:1400]), "val_data": (x[1400:], y[1400:]),
        "steps": 20, "lr": 0.01, "analysis": analysis, "progress": False,
        "cache": tmp_path / "cache",
    }  # fmt: skip
    table = measure_importance(model, X1, None, **options)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert table.meta["columns"] == ["neg_kl", "val_acc"]
    assert table.norm == "none"
    same = [v for k, v in table.scores.items() if unchanged(analysis, k)]
    changed = [v for k, v in table.scores.items() if not unchanged(analysis, k)]
    assert same and changed and all(v <= 0 for v in table.scores.values())
    assert len(set(same)) == 1  # deterministic: the same network, the same steps
    assert same[0] >= max(changed) and same[0] > sum(changed) / len(changed)
    again = measure_importance(model, X1, None, **options)  # from the per-entry cache
    assert again.scores == table.scores
    by_acc = measure_importance(model, X1, None, **{**options, "score": "accuracy"})
    assert by_acc.meta["columns"] == ["val_acc", "neg_kl"]


def test_distill_on_unlabelled_data() -> None:
    model = trained_tiny()
    x, _ = digits()
    table = measure_importance(
        model, X1, x[1400:1528], method="distill", steps=5, lr=0.01, shard=(0, 4),
        progress=False,
    )  # fmt: skip
    # No labels: Δ top-1 is NaN, which the JSON-safe meta stores as None.
    assert all(row[-1] is None for row in table.meta["metrics"])
    with pytest.raises(DepthFXError, match="needs data"):
        measure_importance(model, X1, None, method="distill", progress=False)
