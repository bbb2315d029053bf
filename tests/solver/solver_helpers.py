"""Independent references for the solver tests: random small chains, brute-force enumerations
and a line-by-line scalar transcription of the original ``optimal_patterns`` (spec §4)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from depthfx.blocks import Block, ExtendedBlock
from depthfx.solver import ImportanceTable, LatencyTable, extended_blocks, valid_blocks

#: The paper's latency tables shipped under tests/data/paper_tables (net → file tag).
NETS = {
    "mbv2_1.0": "fish_gpu1_1228",
    "mbv2_1.4": "fish_gpu1_0103",
    "vgg19_no_trt": "fish_gpu1_0317",
}
IMP = "mbv2_1.0_synthetic_importance_raw.csv"
MBV2_BLOCK_ENDS = set(range(2, 51, 3))


#: Small well-formed tables that the bad-input tests corrupt one field at a time.
GOOD_LAT = "id,st,end,time,stdev\n0,0,1,1.0,0.1\n1,0,2,1.5,0.1\n2,1,2,1.0,0.1\n"
GOOD_IMP = (
    ",id,st,end,st_act,end_act,train_loss,train_acc,val_loss,val_acc\n"
    "0,0,0,1,1,1,0,0,0,-1.0\n0,1,0,2,1,1,0,0,0,-2.0\n0,2,1,2,1,1,0,0,0,-1.5\n"
)


def paper_table(data_dir: Path, net: str, kind: str) -> Path:
    """``kind`` = ``time`` or ``opt_time`` file of ``net``."""
    return data_dir / "paper_tables" / net / f"{kind}_{NETS[net]}.csv"


def write_file(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def fold(values: list[float]) -> float:
    """Left-to-right float sum (the order the solver sums in)."""
    total = 0.0
    for v in values:
        total += v
    return total


@dataclass
class Instance:
    """A random chain with its raw tables (chain id ``chain``)."""

    length: int
    blocks: list[Block]
    ext: list[ExtendedBlock]
    times: dict[Block, float]
    scores: dict[ExtendedBlock, float]


def random_instance(rng: np.random.Generator, length: int, quantised: bool) -> Instance:
    """Random barriers/residuals/optional positions; latencies and scores, optionally on a coarse
    grid so that exact ties (and the tie rules) are exercised."""
    barriers = [p for p in range(1, length) if rng.random() < 0.25]
    residuals = []
    for _ in range(int(rng.integers(0, 3))):
        s = int(rng.integers(0, length))
        t = int(rng.integers(s + 1, length + 1))
        residuals.append((s, t))
    blocks = valid_blocks(length, barriers, residuals)
    optional = [p for p in range(1, length + 1) if rng.random() < 0.5]
    fixed = {length: int(rng.integers(0, 2))} if length in optional and rng.random() < 0.3 else None
    ext = extended_blocks(blocks, optional, exclude_zeros=bool(rng.random() < 0.5), pinned=fixed)
    if quantised:
        times = {b: float(rng.integers(1, 12)) / 4 for b in blocks}
        scores = {e: float(rng.integers(-12, 4)) / 4 for e in ext}
    else:
        times = {b: float(rng.uniform(0.02, 2.0)) for b in blocks}
        scores = {e: float(rng.normal(-1.0, 1.0)) for e in ext}
    return Instance(length, blocks, ext, times, scores)


def tables(instances: list[Instance], alpha: float = 1.0) -> tuple[LatencyTable, ImportanceTable]:
    """In-memory tables, chain c = instances[c]."""
    lat = LatencyTable.from_entries(
        {(c, *b): (t, 0.01) for c, inst in enumerate(instances) for b, t in inst.times.items()}
    )
    imp = ImportanceTable.from_entries(
        {(c, *e): v for c, inst in enumerate(instances) for e, v in inst.scores.items()},
        norm="single",
        alpha=alpha,
    )
    return lat, imp


def partitions(st: int, end: int) -> Iterator[tuple[int, ...]]:
    """All increasing point lists st = p0 < … < pr = end."""
    inner = range(st + 1, end)
    for r in range(len(inner) + 1):
        for pts in itertools.combinations(inner, r):
            yield (st, *pts, end)


def brute_topt(times: dict[Block, float], st: int, end: int) -> float:
    """min Σ T over splits into valid pieces whose every prefix (st, p) is a valid block."""
    best = math.inf
    for pts in partitions(st, end):
        pieces = list(itertools.pairwise(pts))
        if all(p in times for p in pieces) and all((st, p) in times for p in pts[1:]):
            total = 0.0
            for p in pieces:
                total += times[p]
            best = min(best, total)
    return best


def brute_iext(h: dict[ExtendedBlock, float], key: ExtendedBlock) -> float:
    """max Σ h over chains of pieces joined at activation-free ends, every prefix an entry."""
    st, end, sa, ea = key
    best = -math.inf
    for pts in partitions(st, end):
        flags = [sa] + [0] * (len(pts) - 2) + [ea]
        pieces = [(pts[k], pts[k + 1], flags[k], flags[k + 1]) for k in range(len(pts) - 1)]
        prefixes = [(st, p, sa, 0) for p in pts[1:-1]]
        if all(p in h for p in pieces) and all(p in h for p in prefixes):
            total = 0.0
            for p in pieces:
                total += h[p]
            best = max(best, total)
    return best


def configurations(
    length: int, cost: dict[Block, int], iext: dict[ExtendedBlock, float]
) -> list[tuple[int, list[float], list[ExtendedBlock]]]:
    """Every (B, flags) configuration of one chain: (Σ g, [I_ext per block], blocks)."""
    out = []
    for pts in partitions(0, length):
        for flags in itertools.product((0, 1), repeat=len(pts) - 1):
            fl = (1, *flags)
            blocks = [(pts[k], pts[k + 1], fl[k], fl[k + 1]) for k in range(len(pts) - 1)]
            if all(b in iext for b in blocks):
                g = sum(cost[b[:2]] for b in blocks)
                out.append((g, [iext[b] for b in blocks], blocks))
    return out


def brute_merge(times: dict[Block, float], length: int, acts: set[int]) -> float:
    """min Σ T over S ⊇ A ∪ {L} whose pieces are valid blocks."""
    best = math.inf
    for pts in partitions(0, length):
        if acts <= set(pts) and all(p in times for p in itertools.pairwise(pts)):
            total = 0.0
            for p in itertools.pairwise(pts):
                total += times[p]
            best = min(best, total)
    return best


def reference_dp2(
    topt: dict[Block, float],
    splits: dict[Block, tuple[int, ...]],
    iext: dict[ExtendedBlock, float],
    length: int,
    budget: float,
    prec: float,
) -> tuple[set[int], set[int], float, int, float] | None:
    """Scalar transcription of the original ``optimal_patterns`` (dict look-ups instead of
    pandas, no ``exit()``: returns None where the original prints "Impossible time limit")."""
    limit = int(budget * prec)
    dp: dict[tuple[int, int, int], float] = {}
    dp_time: dict[tuple[int, int, int], int] = {}
    for t in range(limit):
        dp[t, 0, 1] = 0
        dp_time[t, 0, 1] = 0
    max_tab: dict[tuple[int, int, int], tuple[int, int, int]] = {}
    mpos_tab: dict[tuple[int, int, int], set[int]] = {}
    for m in range(1, length + 1):
        gs = {i: int(topt[i, m] * prec) for i in range(m) if (i, m) in topt}
        cands = {
            a: [(i, j) for i in range(m) for j in range(2) if (i, m, j, a) in iext] for a in (0, 1)
        }
        t_min = min(gs.values())
        for t in range(t_min, limit + 1):
            for a in range(2):
                max_imp, opt_time = -math.inf, 0
                arg: tuple[int, int, int] | None = None
                mpos: set[int] = set()
                for i, j in cands[a]:
                    g = gs[i]
                    if (t - g, i, j) not in dp:
                        continue
                    cand = dp[t - g, i, j] + iext[i, m, j, a]
                    cand_time = dp_time[t - g, i, j] + g
                    r_imp, r_cand = round(max_imp, 7), round(cand, 7)
                    if r_imp < r_cand or (r_imp == r_cand and cand_time < opt_time):
                        max_imp, opt_time, arg = cand, cand_time, (t - g, i, j)
                        brks = set(splits[i, m])
                        mpos = brks if i == 0 else brks | mpos_tab[t - g, i, j]
                if arg is not None:
                    dp[t, m, a] = max_imp
                    dp_time[t, m, a] = opt_time
                    max_tab[t, m, a] = arg
                    mpos_tab[t, m, a] = mpos
    t, m = limit, length
    if all((t, m, a) not in dp for a in range(2)):
        return None
    ends = [dp.get((t, m, a), -math.inf) for a in range(2)]
    sol_a = int(np.argmax(ends))
    a = sol_a
    merge, blk_ends, acts = {m}, {m}, ({m} if sol_a else set())
    while m > 0:
        merge |= mpos_tab[t, m, a]
        blk_ends.add(m)
        if a:
            acts.add(m)
        t, m, a = max_tab[t, m, a]
    assert dp[t, m, a] == 0
    merge.discard(0)
    st, st_act = 0, 1
    imp_sum, int_sum, flt_sum = 0, 0, 0
    for pos in sorted(blk_ends):
        a = int(pos in acts)
        imp_sum += iext[st, pos, st_act, a]
        int_sum += int(topt[st, pos] * prec)
        flt_sum += topt[st, pos]
        st, st_act = pos, a
    assert imp_sum == dp[limit, length, sol_a]
    return acts, merge, imp_sum, int_sum, flt_sum
