"""Latency tables and predicted-vs-measured latency for torchvision mobilenet_v2 (224×224).

For each batch size: the time to build the whole table (all valid blocks, general strides),
then for budgets 0.9/0.8/0.7/0.6 of the measured end-to-end latency a plan from the DP, the
merged model (prepare + convert), and its predicted vs measured latency and speed-up over the
backend-optimised original, timed interleaved in one run.

Importance is a STAND-IN (no importance tables yet): score = −(number of original activations
an extended block removes), so the DP keeps as many activations as the budget allows.

    .venv/bin/python benchmarks/latency.py [--batch 1 8] [--threads 2] [--cache DIR]
    .venv/bin/python benchmarks/latency.py --backend tensorrt --device cuda --precision fp16 \
        --batch 1 128
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
import torchvision

from depthfx.analysis import Analysis, analyze
from depthfx.errors import InfeasibleBudget
from depthfx.measure.latency import measure_latency_table
from depthfx.passes.merge import convert
from depthfx.passes.prepare import prepare
from depthfx.plans import chain_plan
from depthfx.report import latency_report
from depthfx.solver import ImportanceTable, solve
from depthfx.testing import plan_for


def stand_in_importance(analysis: Analysis) -> ImportanceTable:
    """−(activations removed): interior original activations, plus the end one if dropped."""
    entries = {}
    for chain in analysis.chains:
        acts = chain.default_acts
        for st, end, _, end_act in chain.extended_blocks():
            removed = sum(1 for p in range(st + 1, end) if p in acts)
            removed += int(end in acts and not end_act)
            entries[chain.index, st, end, _, end_act] = -float(removed)
    return ImportanceTable.from_entries(entries, norm="none")


def run(batch: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(weights=None).eval()
    x = torch.randn(batch, 3, 224, 224)
    analysis = analyze(model, (x,), strided=args.strided)
    options = {"precision": args.precision} if args.backend == "tensorrt" else {}
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
        backend_options=options,
    )
    build_s = time.perf_counter() - t0
    m = table.meta
    print(
        f"\n## batch {batch}: {len(table.times)} valid blocks, {m['unique_shapes']} shapes, "
        f"{m['timed_now']} timed now / {m['from_cache']} cached, {len(m['bounded'])} bounded, "
        f"{len(m['coarse'])} coarse; table built in {build_s:.1f} s"
    )
    print(
        f"end-to-end {m['end_to_end_ms']:.3f} ms, chains (original) "
        f"{m['original_chain_ms']:.3f} ms, fixed {m['fixed_ms']:.3f} ms"
    )
    imp = stand_in_importance(analysis)
    rows = []
    for frac in args.budgets:
        budget_ms = frac * m["end_to_end_ms"]
        chain_budget = budget_ms - m["fixed_ms"]
        prec = 1500.0 / chain_budget
        try:
            sol = solve(table, imp, chain_budget, prec=prec)
        except InfeasibleBudget as err:
            print(f"budget {frac:.1f}: infeasible ({err})")
            continue
        chains = [
            chain_plan([cv.node for cv in c.convs], s.act_pos, s.merge_pos)
            for c, s in zip(analysis.chains, sol.chains, strict=True)
        ]
        plan = plan_for(analysis, chains)
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
            backend_options=options,
        )
        rows.append({"budget": frac, **rep.to_dict()})
        print(
            f"budget {frac:.1f} ({budget_ms:7.3f} ms): predicted {rep.predicted_ms:7.3f}  "
            f"measured {rep.measured_ms:7.3f}  error {100 * rep.error:+6.1f}%  "
            f"baseline {rep.baseline_ms:7.3f}  speed-up {rep.speedup:.3f}×"
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--budgets", type=float, nargs="+", default=[0.9, 0.8, 0.7, 0.6])
    p.add_argument("--strided", default="general")
    p.add_argument("--cache", default=None)
    p.add_argument("--jobs", type=int, default=1)
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
