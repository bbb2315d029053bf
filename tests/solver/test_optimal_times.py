"""DP1 (T_opt): brute force on small random chains and the tie rules of spec §2.4 (a split must
be strictly faster; the direct block wins ties, then the smallest k)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from solver_helpers import brute_topt, fold, random_instance, tables

from depthfx.solver import LatencyTable


@pytest.mark.parametrize("seed", range(60))
def test_dp1_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    inst = random_instance(rng, int(rng.integers(1, 8)), quantised=seed % 2 == 0)
    lat, _ = tables([inst], alpha=float(rng.uniform(0, 2)))
    opt = lat.optimal()
    for st, end in inst.blocks:
        assert opt.times[0, st, end] == brute_topt(inst.times, st, end)
        pieces = list(itertools.pairwise(opt.splits[0, st, end]))
        assert opt.times[0, st, end] == fold([inst.times[p] for p in pieces])


def _lat(times: dict[tuple[int, int], float]) -> LatencyTable:
    return LatencyTable.from_entries(times)


def test_dp1_ties_keep_direct_block_then_smallest_split() -> None:
    lat = _lat({(0, 1): 1.0, (1, 2): 1.0, (2, 3): 1.0, (0, 2): 2.0, (1, 3): 2.0, (0, 3): 5.0})
    opt = lat.optimal()
    assert opt.splits[0, 0, 2] == (0, 2)  # 1 + 1 == 2: the direct block wins the tie
    assert opt.times[0, 0, 3] == 3.0
    assert opt.splits[0, 0, 3] == (0, 1, 3)  # k = 1 and k = 2 both give 3: smallest k
    assert opt.stdevs[0, 0, 3] == 0.0
