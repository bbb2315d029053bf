"""The proxy's input data: random inputs without data, with a warning, seeded."""

from __future__ import annotations

import pytest
from importance_helpers import X1, tiny_tables

from depthfx.measure.importance import measure_importance

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_random_inputs_warn_and_are_deterministic() -> None:
    model, analysis, _ = tiny_tables()
    with pytest.warns(UserWarning, match="random inputs") as warned:
        a = measure_importance(model, X1, analysis=analysis, seed=3, progress=False)
    assert warned[0].filename == __file__  # the warning points at the caller
    with pytest.warns(UserWarning, match="random inputs"):
        b = measure_importance(model, X1, analysis=analysis, seed=3, progress=False)
    with pytest.warns(UserWarning, match="random inputs"):
        c = measure_importance(model, X1, analysis=analysis, seed=4, progress=False)
    assert a.scores == b.scores
    assert a.scores != c.scores
    assert a.meta["fingerprint"]["random_inputs"] is True
