"""DP3 (I_ext): brute force on small random chains and the tie rule of spec §3.5 (strictly
greater wins; the direct entry keeps ties)."""

from __future__ import annotations

import numpy as np
import pytest
from solver_helpers import brute_iext, random_instance, tables

from depthfx.solver import ImportanceTable


@pytest.mark.parametrize("seed", range(60))
def test_dp3_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    inst = random_instance(rng, int(rng.integers(1, 8)), quantised=seed % 2 == 0)
    _, imp = tables([inst], alpha=float(rng.uniform(0, 2)))
    h = {k[1:]: v for k, v in imp.normalised().items()}
    ext = imp.extended()
    for key in inst.ext:
        assert ext.values[(0, *key)] == brute_iext(h, key)


def _imp(scores: dict[tuple[int, int, int, int], float]) -> ImportanceTable:
    return ImportanceTable.from_entries(scores, norm="none")


def test_dp3_ties_keep_direct_entry() -> None:
    h = {(0, 1, 1, 1): 0.0, (0, 1, 1, 0): 0.5, (1, 2, 1, 1): 0.0, (1, 2, 0, 1): 0.5}
    ext = _imp({**h, (0, 2, 1, 1): 1.0}).extended()
    assert ext.splits[0, 0, 2, 1, 1] == (0, 2)
    ext = _imp({**h, (0, 2, 1, 1): 0.75}).extended()
    assert ext.splits[0, 0, 2, 1, 1] == (0, 1, 2) and ext.values[0, 0, 2, 1, 1] == 1.0
