"""The importance-method registry: a registered method is what measure_importance runs; unknown
and twice-registered names are errors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from depthfx.errors import DepthFXError
from depthfx.measure.importance import (
    IMPORTANCE_METHODS,
    ImportanceRequest,
    ImportanceResult,
    entries_of,
    measure_importance,
    model_hash,
    register_importance_method,
)
from depthfx.passes.analyze import analyze

X = torch.zeros(1, 3, 8, 8)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()
    ).eval()


@pytest.fixture
def width() -> Iterator[list[ImportanceRequest]]:
    """Registers ``width`` (score: minus the block's length) for one test; yields its calls."""
    calls: list[ImportanceRequest] = []

    @register_importance_method("width", norm="all", alpha=2.0)
    def width_importance(request: ImportanceRequest) -> ImportanceResult:
        calls.append(request)
        scores = {k: -float(k[2] - k[1]) for k in request.keys}
        meta = {"method": "width", "fingerprint": {"method": "width"}}
        return ImportanceResult(scores, ["neg_width"], {k: [v] for k, v in scores.items()}, meta)

    try:
        yield calls
    finally:
        del IMPORTANCE_METHODS["width"]


def test_a_registered_method_is_what_measure_importance_runs(width) -> None:
    model = _model()
    table = measure_importance(model, X, method="width", lr=0.5, progress=False)
    (request,) = width
    keys = entries_of(analyze(model, X, training=False))
    assert request.keys == keys and request.lr == 0.5 and request.function is None
    assert request.model is model and request.model_id == model_hash(model)
    assert table.scores == {k: -float(k[2] - k[1]) for k in keys}
    assert table.score == "neg_width" and (table.norm, table.alpha) == ("all", 2.0)
    assert table.meta["fingerprint"] == {"method": "width", "model": model_hash(model)}
    again = measure_importance(model, X, method="width", norm="none", progress=False)
    assert (again.norm, again.alpha) == ("none", 2.0)  # the caller's norm wins


def test_unknown_methods_are_refused_with_the_registered_names(width) -> None:
    with pytest.raises(DepthFXError, match=r"unknown method 'nope'.*'finetune', 'proxy', 'width'"):
        measure_importance(_model(), X, method="nope", progress=False)
    assert width == []


def test_a_name_is_registered_once(width) -> None:
    with pytest.raises(DepthFXError, match="already registered"):
        register_importance_method("width")(lambda request: None)
    assert set(IMPORTANCE_METHODS) == {"callable", "distill", "finetune", "proxy", "width"}
