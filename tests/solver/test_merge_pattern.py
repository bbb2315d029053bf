"""The merge-pattern DP (spec §4.5) against brute force on small random chains."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from solver_helpers import brute_merge, fold, random_instance, tables

from depthfx.solver import optimal_merge_pattern


@pytest.mark.parametrize("seed", range(40))
def test_merge_pattern_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(2000 + seed)
    length = int(rng.integers(1, 8))
    inst = random_instance(rng, length, quantised=seed % 2 == 0)
    lat, _ = tables([inst])
    acts = {p for p in range(1, length + 1) if rng.random() < 0.4}
    expected = brute_merge(inst.times, length, acts)
    if math.isinf(expected):
        with pytest.raises(Exception, match="no valid blocks"):
            optimal_merge_pattern(acts, lat)
        return
    mp = optimal_merge_pattern(acts, lat)
    assert mp.time == expected
    assert acts <= set(mp.merge_pos) and length in mp.merge_pos
    pts = [0, *mp.merge_pos]
    assert fold([inst.times[p] for p in itertools.pairwise(pts)]) == mp.time
