"""measure_importance: every extended block covered, the same table through the solver's
ImportanceTable.measure façade."""

from __future__ import annotations

import math

import pytest
from importance_helpers import X1, digits, tiny_tables

import depthfx

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_two_chains_and_every_extended_block_covered() -> None:
    _, analysis, table = tiny_tables()
    assert [c.num_convs for c in analysis.chains] == [4, 1]
    expected = [(c.index, *b) for c in analysis.chains for b in c.extended_blocks()]
    assert list(table.scores) == expected
    # position 2 is linear in the original: both flags are measured there
    assert (0, 2, 3, 0, 1) in table.scores and (0, 1, 2, 1, 0) in table.scores
    assert table.norm == "none" and table.score == "neg_kl"


def test_measure_classmethod_and_solver(tmp_path) -> None:
    model, analysis, table = tiny_tables()
    same = depthfx.solver.ImportanceTable.measure(
        model, X1, [digits()[0][1400:1528]], analysis=analysis, score="kl", estimate="exact",
        progress=False,
    )  # fmt: skip
    assert same.scores == table.scores
    assert not math.isnan(sum(table.extended().values.values()))
