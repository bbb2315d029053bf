"""ICML'23 vs LayerMerge vs combined (spec §7.19) on ONNX Runtime CPU, batch 1, 1 thread.

Per model: the ICML'23 tables (latency + proxy importance, cached as in ``end_to_end.py``) and
each chain's LayerMerge variant tables (timed in the same setting and block cache, scored by the
same proxy on the same images) are built once. For every method and budget (fractions of the
measured original, and ``fastest``: the smallest feasible budget of that method) the plan is
prepared, merged (exact, verified by ``convert``) and timed interleaved with the original
(:func:`depthfx.benchmark.compare`). One row per (model, method, budget): predicted and measured
ms, error, measured speed-up, DP objective, pruned convs and merge groups. Weights are random
except efficientnet_lite0 (see ``end_to_end.py``), so the proxy's scores are nearly flat.

    .venv/bin/python benchmarks/layermerge.py --models resnet18            # one model
    .venv/bin/python benchmarks/layermerge.py --models resnet18 --input-size 64 --images 4 \\
        --budgets 0.9 fastest                                               # a quick check
"""

from __future__ import annotations

import argparse
import pickle
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from end_to_end import NORMALISE, build_model

import depthfx
from depthfx.benchmark import compare
from depthfx.data import load_dataset
from depthfx.errors import InfeasibleBudget
from depthfx.io import write_json
from depthfx.measure.layermerge_plan import METHODS, variant_tables
from depthfx.passes.analyze import analyze
from depthfx.solver import ImportanceTable, LatencyTable

DEFAULT_CACHE = Path.home() / ".cache" / "depthfx" / "layermerge"
MODELS = ["resnet18", "resnet34", "resnet50", "mobilenet_v2", "efficientnet_lite0"]


def fastest_plan(model: torch.nn.Module, x: torch.Tensor, opts: dict[str, Any]) -> Any:
    """The plan at the smallest feasible budget of a method (``budget="fastest"``)."""
    return depthfx.plan(model, x, "fastest", **opts)


def run_row(model: torch.nn.Module, x: torch.Tensor, budget: str, opts: dict[str, Any],
            rounds: int, threads: int) -> dict[str, Any]:  # fmt: skip
    """Plan, merge and time one (method, budget)."""
    try:
        if budget == "fastest":
            plan = fastest_plan(model, x, opts)
        else:
            plan = depthfx.plan(model, x, float(budget), **opts)
    except InfeasibleBudget as err:
        return {"feasible": False, "min_budget_ms": err.minimum}
    merged = depthfx.convert(depthfx.prepare(model, plan).eval())
    cmp = compare(model, merged, (x,), threads=threads, rounds=rounds)
    measured = cmp.b.timing.median_ms
    assert plan.predicted_ms is not None
    return {
        "feasible": True,
        "budget_ms": plan.budget_ms,
        "predicted_ms": plan.predicted_ms,
        "measured_ms": measured,
        "original_ms": cmp.a.timing.median_ms,
        "error": plan.predicted_ms / measured - 1,
        "speedup": cmp.speedup,
        "objective": plan.objective,
        "pruned": sum(len(c.pruned) for c in plan.chains),
        "groups": sum(len(c.groups()) for c in plan.chains),
        "activations": sum(len(c.act_pos) for c in plan.chains),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--budgets", nargs="+", default=["0.9", "0.75", "0.6", "fastest"])
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--images", type=int, default=16, help="proxy images")
    p.add_argument("--estimate", choices=("fisher", "exact"), default="fisher")
    p.add_argument("--rounds", type=int, default=20, help="interleaved timing rounds")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore", message="depthfx.compile merges without fine-tuning")
    print(f"# ONNX Runtime CPU, batch 1, {args.input_size}², threads={args.threads}, proxy "
          f"({args.estimate}) on fashion-mnist-test[:{args.images}]")  # fmt: skip
    print(f"{'model':<18} {'method':<10} {'budget':>7} {'pred ms':>8} {'meas ms':>8} "
          f"{'error':>7} {'speedup':>7} {'orig ms':>8} {'obj':>9} pruned groups")  # fmt: skip
    rows = []
    for name in args.models:
        model, weights = build_model(name)
        x = torch.randn(1, 3, args.input_size, args.input_size)
        mean, std = NORMALISE.get(name, (None, None))
        try:
            data = load_dataset(f"fashion-mnist-test[:{args.images}]",
                                input_shape=tuple(x.shape[1:]), mean=mean, std=std)  # fmt: skip
        except Exception as err:  # the proxy then runs on random inputs
            print(f"# no fashion-mnist ({err}); the proxy uses random inputs")
            data = None
        stem = args.cache / f"{name}_{args.input_size}_t{args.threads}"
        t0 = time.perf_counter()
        lat_path, imp_path = stem.with_suffix(".latency.json"), stem.with_suffix(".imp.json")
        if lat_path.is_file():
            latency = LatencyTable.read_json(lat_path)
        else:
            latency = LatencyTable.measure(model, (x,), threads=args.threads,
                                           cache_dir=args.cache / "timings")  # fmt: skip
            latency.write_json(lat_path)
        t_lat = time.perf_counter() - t0
        importance = (
            ImportanceTable.read_json(imp_path) if imp_path.is_file() else
            ImportanceTable.measure(model, (x,), data, images=args.images, latency=latency,
                                    estimate=args.estimate, progress=False)
        )  # fmt: skip
        importance.write_json(imp_path)
        t_imp = time.perf_counter() - t0 - t_lat
        analysis = analyze(model, (x,), training=False)
        var_path = stem.with_suffix(".variants.pkl")
        if args.methods == ["icml23"]:  # no variant tables needed
            variants = {}
        elif var_path.is_file():  # written by this script: the joined tables of an earlier run
            variants = pickle.loads(var_path.read_bytes())
        else:
            variants = variant_tables(
                model, (x,), data, analysis,
                latency_options={"threads": args.threads, "cache_dir": args.cache / "timings"},
                importance_options={"estimate": args.estimate, "images": args.images},
            )  # fmt: skip
            var_path.write_bytes(pickle.dumps(variants))
        t_var = time.perf_counter() - t0 - t_lat - t_imp
        lat_meta = [t.meta["latency"] for t in variants.values()]
        n_var = sum(len(t.variants) for t in variants.values())
        n_all = sum(m.get("variants", 0) for m in lat_meta)
        n_out = sum(len(m.get("bounded", ())) + len(m.get("skipped", ())) for m in lat_meta)
        t_vlat = sum(m.get("build_s", 0.0) for m in lat_meta)
        print(f"# {name} ({weights}): tables {t_lat:.0f} s latency, {t_imp:.0f} s importance, "
              f"{t_var:.0f} s for {n_var} of {n_all} variants ({t_vlat:.0f} s of it timing, "
              f"{n_out} bounded or skipped)", flush=True)  # fmt: skip
        for method in args.methods:
            opts = {"latency": latency, "importance": importance, "method": method,
                    "variants": variants, "data": data}  # fmt: skip
            for budget in args.budgets:
                r = run_row(model, x, budget, opts, args.rounds, args.threads)
                rows.append({"model": name, "method": method, "budget": budget, **r})
                head = f"{name:<18} {method:<10} {budget:>7}"
                if not r["feasible"]:
                    print(f"{head} infeasible (needs {r['min_budget_ms']:.3f} ms)", flush=True)
                    continue
                print(f"{head} {r['predicted_ms']:8.3f} {r['measured_ms']:8.3f} "
                      f"{100 * r['error']:+6.1f}% {r['speedup']:6.2f}× {r['original_ms']:8.3f} "
                      f"{r['objective']:9.4f} {r['pruned']:>6} {r['groups']:>6}",
                      flush=True)  # fmt: skip
    if args.json is not None:
        write_json(args.json, rows)


if __name__ == "__main__":
    main()
