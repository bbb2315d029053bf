"""Independent references for the LayerMerge tests: the bundled instances, a line-by-line
transcription of the original ``optimal_patterns`` (spec §4.1, §4.4, §4.5) that reads the CSV
files itself, and a brute force over every tiling and every variant."""

from __future__ import annotations

import ast
import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from depthfx.solver import LayerMergeTable, Variant

DATA = Path(__file__).parent.parent / "data" / "layermerge"
INSTANCES = ("toy12", "toy12_ties", "mbv2_1.0_synth", "resnet34_synth")
SMALL = ("toy12", "toy12_ties")


def paths(name: str) -> tuple[Path, Path]:
    """(latency CSV, normalised importance CSV) of a bundled instance."""
    folder = DATA / name
    return folder / f"time_{name}.csv", folder / "normalized_importance.csv"


def load(name: str) -> LayerMergeTable:
    return LayerMergeTable.read_csv(*paths(name))


def structure(name: str) -> dict[str, Any]:
    return json.loads((DATA / name / "structure.json").read_text())


def runs(name: str) -> list[tuple[float, int]]:
    doc = json.loads((DATA / name / "budgets.json").read_text())
    return [(r["T0"], r["prec"]) for r in doc["runs"]]


def all_runs() -> list[tuple[str, float, int]]:
    return [(name, t0, prec) for name in INSTANCES for t0, prec in runs(name)]


def fold(values: list[float]) -> float:
    """Left-to-right sum from the first element, as the original adds."""
    total = 0.0
    for v in values:
        total += v
    return total


# ----------------------------------------------------------------------------- the original


def reference_optimal_patterns(
    flt_time_limit: float, act_num: int, time_path: Path, imp_path: Path, prec: float
) -> dict[str, Any] | None:
    """Transcription of ``optimal_patterns``; None where the original calls ``exit()``.

    Rows are paired by position inside each block (``zip``), exactly like the original;
    ``csv`` + ``float`` stand in for pandas (exact on these files, spec §4.1).
    """
    time_dict: dict[str, dict[str, float]] = {}
    imp_dict: dict[str, dict[str, tuple[float, str]]] = {}
    with time_path.open(newline="") as f:
        for r in csv.DictReader(f):
            key, ck = (
                f"st{r['st']}_end{r['end']}",
                f"ker{r['ker']}_str{r['str']}_is_dw_{r['is_dw']}",
            )
            time_dict.setdefault(key, {})[ck] = float(r["time"])
    with imp_path.open(newline="") as f:
        for r in csv.DictReader(f):
            key, ck = (
                f"st{r['st']}_end{r['end']}",
                f"ker{r['ker']}_str{r['str']}_is_dw_{r['is_dw']}",
            )
            imp_dict.setdefault(key, {})[ck] = (float(r["importance"]), r["conv_comb"])

    T = int(flt_time_limit * prec)
    dp = {(t, 0): 0 for t in range(T)}
    dp_time = {(t, 0): 0 for t in range(T)}
    max_tab: dict[tuple[int, int], tuple[int, int]] = {}
    children_tab: dict[tuple[int, int], dict[int, tuple[str, str]]] = {}
    for end in range(1, act_num + 1):
        costs = [
            int(g * prec)
            for st in range(end)
            if f"st{st}_end{end}" in time_dict
            for g in time_dict[f"st{st}_end{end}"].values()
        ]
        t_min = min(costs) if costs else math.inf
        if t_min > T:
            return None  # "Impossible time limit"; exit()
        for t in range(int(t_min), T + 1):
            max_imp, opt_time = -math.inf, 0
            arg, child = None, None
            for st in range(end):
                key = f"st{st}_end{end}"
                if key not in time_dict:
                    continue
                for (ck, g_flt), (h, comb) in zip(
                    time_dict[key].items(), imp_dict[key].values(), strict=True
                ):
                    g = int(g_flt * prec)
                    if (t - g, st) not in dp:
                        continue
                    cand, cand_time = dp[t - g, st] + h, dp_time[t - g, st] + g
                    if round(max_imp, 7) < round(cand, 7) or (
                        round(max_imp, 7) == round(cand, 7) and cand_time < opt_time
                    ):
                        max_imp, opt_time, arg = cand, cand_time, (t - g, st)
                        child = (
                            {end: (ck, comb)}
                            if st == 0
                            else {**children_tab[t - g, st], end: (ck, comb)}
                        )
            if max_imp != -math.inf:
                dp[t, end], dp_time[t, end] = max_imp, opt_time
                max_tab[t, end], children_tab[t, end] = arg, child

    if (T, act_num) not in dp:
        return None
    children = children_tab[T, act_num]
    acts = {act_num}
    t, e = T, act_num
    while e > 0:
        acts.add(e)
        t, e = max_tab[t, e]
    assert dp[t, e] == 0
    imp_sum, int_sum, flt_sum, convs, st = 0, 0, 0, set(), 0
    for pos in sorted(acts):
        ck, comb = children[pos]
        imp_sum += imp_dict[f"st{st}_end{pos}"][ck][0]
        flt = time_dict[f"st{st}_end{pos}"][ck]
        int_sum += int(flt * prec)
        flt_sum += flt
        convs |= set(ast.literal_eval(comb))
        st = pos
    assert imp_sum == dp[T, act_num]
    return {
        "act_ind": acts,
        "conv_ind": convs,
        "children_dict": children,
        "imp_sum": imp_sum,
        "int_time_sum": int_sum,
        "flt_time_sum": flt_sum,
    }


# ----------------------------------------------------------------------------- brute force


@dataclass(frozen=True)
class Tiling:
    """One complete tiling: its variants, Σ importance (left fold), Σ integer cost and the
    scan positions of its blocks, last block first."""

    variants: tuple[Variant, ...]
    value: float
    cost: int
    scan: tuple[tuple[int, int], ...]


def tilings(table: LayerMergeTable, prec: float) -> list[Tiling]:
    """Every tiling of 0..L into table blocks, with every choice of variant per block."""
    # the DP scans the candidates of one end by st ascending, then latency-file order
    starts: dict[int, list[tuple[tuple[int, int], Variant]]] = {}
    for row, v in enumerate(table.variants):  # latency-file order
        starts.setdefault(v.st, []).append(((v.st, row), v))
    out: list[Tiling] = []

    def walk(pos: int, chosen: list[tuple[tuple[int, int], Variant]]) -> None:
        if pos == table.length:
            vs = tuple(v for _, v in chosen)
            cost = sum(int(v.time * prec) for v in vs)
            scan = tuple(k for k, _ in reversed(chosen))
            out.append(Tiling(vs, fold([v.importance for v in vs]), cost, scan))
            return
        for k, v in starts.get(pos, []):
            walk(v.end, [*chosen, (k, v)])

    walk(0, [])
    return out


def rank(tilings_: list[Tiling], *, rounding: bool = True, cost_rule: bool = True) -> list[Tiling]:
    """Tilings in the DP's preference order: the largest value rounded to 7 decimals, then the
    smallest integer cost, then the first in the DP's scan order, compared from the last block
    backwards (the last block is chosen at D(T, L) among candidates scanned st ascending, then
    file order; its prefix was chosen the same way at D(T − g, st)). ``rounding`` and
    ``cost_rule`` switch those two rules off."""

    def order(p: Tiling) -> tuple[Any, ...]:
        value = round(p.value, 7) if rounding else p.value
        return (-value, p.cost if cost_rule else 0, p.scan)

    return sorted(tilings_, key=order)


def brute_force(ranked: list[Tiling], units: int) -> Tiling | None:
    """The DP's answer by exhaustion: the first ranked tiling with 1 ≤ cost ≤ T (the base
    case stops at T − 1, so a tiling of cost 0 never reaches D(T, L))."""
    return next((p for p in ranked if 1 <= p.cost <= units), None)
