"""Latency tables and predicted-vs-measured latency for torchvision mobilenet_v2 (224×224).

For each batch size: the time to build the whole table (all valid blocks, general strides,
in-context calibration included), the calibration fit, then for budgets 0.9/0.8/0.7/0.6 of the
original's measured latency a plan from the DP (``depthfx.plan``), the merged model (prepare +
convert), and its predicted vs measured latency and speed-up over the backend-optimised
original, timed interleaved in one run. Columns:

* ``pred``/``raw``: the calibrated prediction and the raw additive one (fixed + Σ T);
* ``meas``, ``err``/``raw err``: measured latency, (predicted − measured) / measured;
* ``ctx err``: the error of the predicted speed-up against the measured one (prediction and
  measurement each relative to their original, timed in the same run): what remains when the
  machine's speed state differs between table build and report;
* ``speed-up``: paired median baseline/merged ratio of the interleaved run.

Importance is a STAND-IN (no importance table): score = −(number of original activations an
extended block removes), so the DP keeps as many activations as the budget allows.

    .venv/bin/python benchmarks/latency.py [--batch 1 8] [--threads 2] [--cache DIR]
    .venv/bin/python benchmarks/latency.py --no-calibration   # the raw additive model only
    .venv/bin/python benchmarks/latency.py --backend tensorrt --device cuda --precision fp16 \
        --batch 1 128
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Any

import torch
import torchvision

from depthfx.api import plan as make_plan
from depthfx.errors import InfeasibleBudget
from depthfx.measure.calibration import activation_importance, describe_calibration
from depthfx.measure.latency_table import measure_latency_table
from depthfx.measure.prediction import chain_ms
from depthfx.passes.analyze import analyze
from depthfx.passes.convert import convert
from depthfx.passes.prepare import prepare
from depthfx.report import latency_report


def run(batch: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(weights=None).eval()
    x = torch.randn(batch, 3, 224, 224)
    analysis = analyze(model, (x,), strided=args.strided)
    options: dict[str, Any] = {"precision": args.precision} if args.backend == "tensorrt" else {}
    if args.spinning is not None:
        options["spinning"] = args.spinning == "on"
    t0 = time.perf_counter()
    table = measure_latency_table(
        model,
        (x,),
        backend=args.backend,
        device=args.device,
        threads=args.threads,
        analysis=analysis,
        cache_dir=args.cache,
        jobs=args.jobs,
        calibrate=not args.no_calibration,
        calibration_plans=args.calibration_plans,
        backend_options=options,
    )
    build_s = time.perf_counter() - t0
    m = table.meta
    cal = m.get("calibration") or {}
    print(
        f"\n## batch {batch}: {len(table.times)} valid blocks, {m['unique_shapes']} shapes, "
        f"{m['timed_now']} timed now / {m['from_cache']} cached, {len(m['bounded'])} bounded, "
        f"{len(m['coarse'])} coarse; table built in {build_s:.1f} s "
        f"(calibration {cal.get('seconds', 0.0):.1f} s)"
    )
    print(
        f"end-to-end {m['end_to_end_ms']:.3f} ms (IQR {m['end_to_end_iqr_ms']:.3f}), chains "
        f"(original) {m['original_chain_ms']:.3f} ms, raw fixed {m['fixed_ms']:.3f} ms, call "
        f"overhead {m['call_overhead_ms']:.4f} ms\nlatency model: {describe_calibration(table)}"
    )
    imp = activation_importance(analysis)
    rows = []
    header = (
        f"{'budget':>6} {'budget ms':>9} {'pred':>8} {'raw':>8} {'meas':>8} {'err':>7} "
        f"{'raw err':>7} {'ctx err':>7} {'base':>8} {'speed-up':>8}"
    )
    print(header)
    for frac in args.budgets:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the raw model's negative-fixed warning
                plan = make_plan(
                    model, (x,), frac, latency=table, importance=imp, strided=args.strided
                )
        except InfeasibleBudget as err:
            print(f"{frac:6.2f} infeasible: {err}")
            continue
        merged = convert(prepare(model, plan, (x,)), plan, (x,))
        rep = latency_report(
            model,
            merged,
            plan,
            table,
            (x,),
            backend=args.backend,
            device=args.device,
            threads=args.threads,
            rounds=args.rounds,
            backend_options=options,
        )
        raw = m["fixed_ms"] + chain_ms(table, plan)
        raw_err = (raw - rep.measured_ms) / rep.measured_ms
        # Latency relative to the original: predicted (table) vs measured (same run).
        ctx_err = rep.predicted_ms / rep.predicted_baseline_ms * rep.speedup - 1
        rows.append({"budget": frac, **rep.to_dict(), "raw_ms": raw, "ctx_error": ctx_err})
        print(
            f"{frac:6.2f} {plan.budget_ms:9.3f} {rep.predicted_ms:8.3f} {raw:8.3f} "
            f"{rep.measured_ms:8.3f} {100 * rep.error:+6.1f}% {100 * raw_err:+6.1f}% "
            f"{100 * ctx_err:+6.1f}% {rep.baseline_ms:8.3f} {rep.speedup:7.3f}×",
            flush=True,
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--spinning", choices=("on", "off"), default=None, help="ORT CPU spinning")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--budgets", type=float, nargs="+", default=[0.9, 0.8, 0.7, 0.6])
    p.add_argument("--strided", default="general")
    p.add_argument("--cache", default=None)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--rounds", type=int, default=30, help="A/B rounds per report")
    p.add_argument("--calibration-plans", type=int, default=2)
    p.add_argument("--no-calibration", action="store_true")
    args = p.parse_args()
    print(
        f"# mobilenet_v2 224x224, {args.backend}/{args.device} {args.precision}, "
        f"threads={args.threads}, strided={args.strided}\n"
        "# importance: STAND-IN score = -(activations removed), not a measured importance"
    )
    for batch in args.batch:
        run(batch, args)


if __name__ == "__main__":
    main()
