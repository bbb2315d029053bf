"""``depthfx solve``: run the two-stage DP (or, with ``--method layermerge``, the LayerMerge DP)
on a latency table and an importance table."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from depthfx.commands.solve_layermerge import HELP, run_layermerge

DESCRIPTION = """\
Choose which activations to keep (A) and where to merge convolutions (S) so that the summed
importance is maximal under a latency budget (Kim et al., ICML 2023): DP1 turns T into T_opt,
DP3 turns the raw importance into I_ext, DP2 maximises sum I_ext subject to
sum floor(prec*T_opt) <= int(prec*budget).

Input formats (the original code's CSV files; positions p = 0..L, a block (st, end) merges
convs st+1..end; an optional `chain` column keys several chains, default chain 0):
  --latency    time_*.csv: id, st, end, time, stdev   (one row per valid block; time in ms)
  --importance importance.csv: [unnamed index], id, st, end, st_act, end_act, train_loss,
               train_acc, val_loss, val_acc   (one row per extended block; --score picks the
               column; any CSV with st, end, st_act, end_act and the score column works)

Outputs: the chosen A and S (0 excluded), the objective sum I_ext, the latency as the float
sum of T_opt and in integer units; --json writes {act_pos, merge_pos, objective, time_units,
time, budget, prec, merge_check} (a list of those for several --budget values).
--opt-time-out writes T_opt (id, st, end, time, stdev, breaks) and --ext-out writes I_ext
(id, st, end, st_act, end_act, imp, breaks). Nothing is written unless everything succeeds.

"""

EPILOG = """\
example (the paper's MobileNetV2-1.0 setting):
  depthfx solve --latency time_fish_gpu1_1228.csv --importance importance.csv \\
      --budget 25 --budget 22.1 --prec 20 --score val_acc --norm single --alpha 1.6
LayerMerge (the original's default prec 10):
  depthfx solve --method layermerge --latency time_mbv2.csv \\
      --importance normalized_importance.csv --budget 13.4 --json out.json
"""

#: The ICML'23 defaults of the options left unset on the command line (None there, so that
#: --method layermerge can reject them).
ICML23_DEFAULTS = {"prec": 20, "score": "val_acc", "norm": "single", "alpha": 1.0}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``solve`` subcommand."""
    p = subparsers.add_parser(
        "solve",
        help="solve the two-stage (or LayerMerge) DP on latency/importance CSV tables",
        description=DESCRIPTION + HELP,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--method",
        choices=("icml23", "layermerge"),
        default="icml23",
        help="icml23: two-stage DP (default); layermerge: single-stage LayerMerge DP",
    )
    p.add_argument("--latency", required=True, metavar="CSV", help="latency table T (time_*.csv)")
    p.add_argument(
        "--importance",
        required=True,
        metavar="CSV",
        help="raw importance table (normalized_importance.csv with --method layermerge)",
    )
    p.add_argument(
        "--budget",
        required=True,
        type=_budget,
        action="append",
        metavar="T0",
        help="latency budget in the table's unit (ms), or 'fastest' (the fastest configuration "
        "the tables allow; with --method layermerge the DP's smallest feasible budget); repeat "
        "for a sweep",
    )
    p.add_argument(
        "--prec",
        type=_positive,
        default=None,
        help="discretisation: units per ms (default 20; 10 with --method layermerge)",
    )
    p.add_argument("--score", default=None, help="importance column (default val_acc)")
    p.add_argument(
        "--norm",
        default=None,
        choices=("default", "single", "all", "none"),
        help="importance normalisation h = h_raw - alpha*mean(mask) (default single)",
    )
    p.add_argument("--alpha", type=_finite, default=None, help="normalisation factor (default 1.0)")
    p.add_argument(
        "--default-acts",
        metavar="P,P,...",
        help="original activation positions, needed by --norm default",
    )
    p.add_argument("--json", metavar="PATH", help="write the solution(s) as JSON")
    p.add_argument("--opt-time-out", metavar="PATH", help="write T_opt (opt_time format)")
    p.add_argument("--ext-out", metavar="PATH", help="write I_ext (ext_importance format)")
    p.set_defaults(func=run)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _budget(text: str) -> float | str:
    return "fastest" if text.strip().lower() == "fastest" else _finite(text)


def _positive(text: str) -> float:
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not positive")
    return value


def _positions(text: str) -> list[int]:
    from depthfx.errors import TableError

    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise TableError(f"--default-acts: {text!r} is not a comma-separated list") from None


def _fmt_pos(pos: list[int]) -> str:
    return ", ".join(map(str, pos)) if pos else "-"


def run(args: argparse.Namespace) -> int:
    """Compute every solution first, then print and write the outputs."""
    from depthfx.errors import DepthFXError
    from depthfx.io import atomic_write
    from depthfx.solver import ImportanceTable, LatencyTable, solve, solve_fastest

    if args.method == "layermerge":
        return run_layermerge(args)
    for name, value in ICML23_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for out in (args.json, args.opt_time_out, args.ext_out):
        if out and not Path(out).resolve().parent.is_dir():
            raise DepthFXError(f"cannot write {out}: its directory does not exist")
    lat = LatencyTable.read_csv(args.latency)
    imp = ImportanceTable.read_csv(
        args.importance,
        score=args.score,
        norm=args.norm,
        alpha=args.alpha,
        default_acts=_positions(args.default_acts) if args.default_acts else None,
    )
    solutions = [
        solve_fastest(lat, imp, args.prec) if b == "fastest" else solve(lat, imp, b, args.prec)
        for b in args.budget
    ]

    for budget, sol in zip(args.budget, solutions, strict=True):
        tag = "fastest: " if budget == "fastest" else ""
        print(
            f"{tag}budget {sol.budget:g} {lat.unit} (prec {sol.prec:g}: {sol.budget_units} units)"
        )
        for cs in sol.chains:
            tag = f"chain {cs.chain} " if len(sol.chains) > 1 else ""
            print(f"  {tag}A ({len(cs.act_pos)} activations kept): {_fmt_pos(cs.act_pos)}")
            print(f"  {tag}S ({len(cs.merge_pos)} merge boundaries): {_fmt_pos(cs.merge_pos)}")
        print(f"  objective: {sol.objective!r}")
        print(f"  time: {sol.time!r} {lat.unit} ({sol.time_units} units <= {sol.budget_units})")
        check = {True: "ok", False: "FAILED", None: "n/a"}[sol.merge_check]
        print(f"  merge-pattern check: {check}")

    docs: list[dict[str, Any]] = [sol.to_dict() for sol in solutions]
    if args.opt_time_out:
        lat.optimal().write_csv(args.opt_time_out)
    if args.ext_out:
        imp.extended().write_csv(args.ext_out)
    if args.json:
        payload = docs[0] if len(docs) == 1 else docs
        atomic_write(args.json, json.dumps(payload, indent=1) + "\n")
    return 0
