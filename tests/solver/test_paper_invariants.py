"""DP2 on the paper's tables: structural invariants, exact sums, the merge-pattern cross-check
and agreement with a scalar transcription of the original ``optimal_patterns``."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from solver_helpers import reference_dp2

from depthfx.solver import (
    ImportanceTable,
    LatencyTable,
    extended_blocks,
    optimal_merge_pattern,
    solve,
)

IMP = "mbv2_1.0_synthetic_importance_raw.csv"
MBV2_BREAKS = {5, 11, 20, 41}
MBV2_BLOCK_ENDS = set(range(2, 51, 3))
VGG_BREAKS = {2, 4, 8, 12, 16}


def _mbv2(data_dir: Path, width: str, alpha: float) -> tuple[LatencyTable, ImportanceTable]:
    tag = {"1.0": "1228", "1.4": "0103"}[width]
    lat = LatencyTable.read_csv(data_dir / f"paper_tables/mbv2_{width}/time_fish_gpu1_{tag}.csv")
    imp = ImportanceTable.read_csv(data_dir / IMP, score="val_acc", norm="single", alpha=alpha)
    return lat, imp


def _vgg(data_dir: Path) -> tuple[LatencyTable, ImportanceTable]:
    """VGG19 latency table with a synthetic importance table (none ships): one (1,1) entry per
    valid block (spec §6.2), drawn like the MBV2 synthetic table's val_acc."""
    lat = LatencyTable.read_csv(data_dir / "paper_tables/vgg19_no_trt/time_fish_gpu1_0317.csv")
    rng = np.random.default_rng(19)
    blocks = [k[1:] for k in lat.times]
    entries = {}
    for st, end, sa, ea in extended_blocks(blocks, optional=()):
        span = end - st
        v = -rng.uniform(0.5, 3.0) if span == 1 else -(span - 1) * rng.uniform(0.1, 0.6)
        entries[st, end, sa, ea] = float(v - (rng.uniform(0, 1) if span > 1 else 0))
    return lat, ImportanceTable.from_entries(entries, norm="single", alpha=1.4)


def _check(lat: LatencyTable, imp: ImportanceTable, budget: float, prec: float, breaks: set[int]):
    sol = solve(lat, imp, budget, prec)
    opt, ext = lat.optimal(), imp.extended()
    length = lat.lengths[0]
    A, S = set(sol.act_pos), set(sol.merge_pos)
    assert sol.act_pos == sorted(A) and sol.merge_pos == sorted(S)
    assert A <= S and length in S and breaks <= S and 0 not in S
    # every DP block is valid; S = B ∪ DP1 breaks; A = block ends with flag 1
    blocks = sol.chains[0].blocks
    assert [b[0] for b in blocks] == [0] + [b[1] for b in blocks[:-1]]
    assert {b[1] for b in blocks if b[3]} == A
    assert set().union(*(opt.splits[0, i, m] for i, m, _, _ in blocks)) - {0} == S
    units = int(budget * prec)
    assert sol.budget_units == units
    objective, time_units, time = 0.0, 0, 0.0
    for i, m, j, a in blocks:
        objective += ext.values[0, i, m, j, a]
        time_units += int(opt.times[0, i, m] * prec)
        time += opt.times[0, i, m]
    assert (sol.objective, sol.time_units, sol.time) == (objective, time_units, time)
    assert time_units <= units
    # the flooring lets the float sum exceed T0 by less than one unit per DP block (spec §4.1)
    assert time < budget + len(blocks) / prec
    # merge-pattern cross-check, recomputed here on the raw table
    assert sol.merge_check is True
    mp = optimal_merge_pattern(A, lat)
    assert mp.merge_pos == sol.merge_pos == sol.fastest_merge_pos[0]
    raw_sum = 0.0
    for p in itertools.pairwise([0, *sol.merge_pos]):
        raw_sum += lat.times[(0, *p)]
    assert mp.time == raw_sum
    return sol


@pytest.mark.parametrize("budget", [18, 20, 22.1, 25])
def test_mbv2_1_0(data_dir: Path, budget: float) -> None:
    lat, imp = _mbv2(data_dir, "1.0", 1.6)
    sol = _check(lat, imp, budget, 20, MBV2_BREAKS)
    # only MBV2 block ends may lack an activation at a DP block end
    ends = {b[1] for b in sol.chains[0].blocks}
    assert ends - set(sol.act_pos) <= MBV2_BLOCK_ENDS
    assert sol.budget_units == {18: 360, 20: 400, 22.1: 442, 25: 500}[budget]


@pytest.mark.parametrize("budget", [18, 20, 22.1, 25])
def test_mbv2_1_4(data_dir: Path, budget: float) -> None:
    lat, imp = _mbv2(data_dir, "1.4", 1.2)
    _check(lat, imp, budget, 20, MBV2_BREAKS)


def test_vgg(data_dir: Path) -> None:
    lat, imp = _vgg(data_dir)
    sol = _check(lat, imp, 160, 10, VGG_BREAKS)
    # VGG has only (1,1) entries: A = S minus the inner DP1 breaks (spec §6.2)
    inner = set().union(
        *(lat.optimal().splits[0, i, m][1:-1] for i, m, _, _ in sol.chains[0].blocks)
    )
    assert set(sol.act_pos) == set(sol.merge_pos) - inner
    assert set(sol.act_pos) >= VGG_BREAKS


@pytest.mark.parametrize("budget", [18, 22.1, 25])
def test_mbv2_matches_original_transcription(data_dir: Path, budget: float) -> None:
    lat, imp = _mbv2(data_dir, "1.0", 1.6)
    opt, ext = lat.optimal(), imp.extended()
    ref = reference_dp2(
        {k[1:]: v for k, v in opt.times.items()},
        {k[1:]: v for k, v in opt.splits.items()},
        {k[1:]: v for k, v in ext.values.items()},
        50,
        budget,
        20,
    )
    assert ref is not None
    sol = solve(lat, imp, budget, 20)
    assert (set(sol.act_pos), set(sol.merge_pos)) == (ref[0], ref[1])
    assert (sol.objective, sol.time_units, sol.time) == (ref[2], ref[3], ref[4])


def test_objective_increases_with_budget(data_dir: Path) -> None:
    lat, imp = _mbv2(data_dir, "1.0", 1.6)
    values = [solve(lat, imp, b, 20).objective for b in (18, 20, 22.1, 25, 30, 40)]
    assert values == sorted(values)
