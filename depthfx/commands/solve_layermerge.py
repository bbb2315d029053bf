"""``depthfx solve --method layermerge``: the single-stage LayerMerge DP (ICML'24) on the
original's ``time_*.csv`` and ``normalized_importance.csv`` (called from ``solve.run``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from depthfx.errors import DepthFXError

if TYPE_CHECKING:
    from depthfx.solver import LayerMergeSolution

HELP = """\
--method layermerge (Kim et al., ICML 2024): tile the chain into blocks, each merged into one
conv that keeps a subset of its convs (the others are pruned), maximising sum importance
subject to sum floor(prec*time) <= int(prec*budget); --prec defaults to 10 here.
--budget fastest solves at the smallest feasible budget (the one an infeasible budget names),
which keeps the best objective among the cheapest tilings (in units of 1/prec ms).
  --latency    time_*.csv: id, st, end, ker, str, is_dw, time, stdev   (one row per block
               variant; time in ms; optional conv_comb column)
  --importance normalized_importance.csv: [unnamed index], id, st, end, ker, str, is_dw,
               conv_comb, importance   (rows are joined with the latency rows by key)
  --json writes {method, act_ind, conv_ind, pruned, children, objective, time_units, time,
  budget, prec, budget_units} (a list for several --budget values).
"""

#: Options that only the ICML'23 method reads.
ICML23_ONLY = ("score", "norm", "alpha", "default_acts", "opt_time_out", "ext_out")


def _fmt(pos: list[int]) -> str:
    return ", ".join(map(str, pos)) if pos else "-"


def run_layermerge(args: argparse.Namespace) -> int:
    """Solve every budget first, then print and write; nothing is written on error."""
    from depthfx.io import atomic_write
    from depthfx.solver import (
        FASTEST,
        LAYERMERGE_PREC,
        LayerMergeTable,
        at_smallest_budget,
        solve_layermerge,
    )

    given = [f"--{n.replace('_', '-')}" for n in ICML23_ONLY if getattr(args, n) is not None]
    if given:
        raise DepthFXError(f"{', '.join(given)}: only used by --method icml23")
    if args.json and not Path(args.json).resolve().parent.is_dir():
        raise DepthFXError(f"cannot write {args.json}: its directory does not exist")
    prec = LAYERMERGE_PREC if args.prec is None else args.prec
    table = LayerMergeTable.read_csv(args.latency, args.importance)

    def solve_at(budget: float) -> LayerMergeSolution:
        return solve_layermerge(table, budget, prec)

    solutions = [
        at_smallest_budget(solve_at)[1] if budget == FASTEST else solve_at(budget)
        for budget in args.budget
    ]

    for budget, sol in zip(args.budget, solutions, strict=True):
        tag = "fastest: " if budget == FASTEST else ""
        print(
            f"{tag}budget {sol.budget:g} {table.unit} (prec {sol.prec:g}: {sol.budget_units} units)"
        )
        print(f"  A ({len(sol.act_ind)} block ends, activations kept): {_fmt(sol.act_ind)}")
        print(f"  C ({len(sol.conv_ind)} kept convs): {_fmt(sol.conv_ind)}")
        print(f"  pruned ({len(sol.pruned)} convs): {_fmt(sol.pruned)}")
        merged = [v for v in sol.blocks if v.end - v.st > 1]
        text = ", ".join(f"({v.st},{v.end}) {v.childkey} keep {v.kept}" for v in merged)
        print(f"  multi-conv blocks ({len(merged)}): {text or '-'}")
        print(f"  objective: {sol.objective!r}")
        print(f"  time: {sol.time!r} {table.unit} ({sol.time_units} units <= {sol.budget_units})")
    if args.json:
        docs: list[dict[str, Any]] = [sol.to_dict() for sol in solutions]
        payload = docs[0] if len(docs) == 1 else docs
        atomic_write(args.json, json.dumps(payload, indent=1) + "\n")
    return 0
