"""The callable method: a user score of every entry's prepared network."""

from __future__ import annotations

import pytest
import torch
from importance_helpers import X1, new_acts, tiny_tables

from depthfx.measure.importance import measure_importance

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_callable_method() -> None:
    model, analysis, _ = tiny_tables()

    def relus(gm: torch.fx.GraphModule) -> float:
        return float(
            sum(
                n.target is torch.relu
                or (n.op == "call_module" and isinstance(gm.get_submodule(n.target), torch.nn.ReLU))
                for n in gm.graph.nodes
            )
        )

    counted = measure_importance(model, X1, method=relus, analysis=analysis, progress=False)
    for key, value in counted.scores.items():
        others = sum(len(c.default_acts) for c in analysis.chains if c.index != key[0])
        assert value == len(new_acts(analysis, key)) + others, key
