"""Accuracy of icml23 vs combined (layer pruning) plans on a trained model, at equal budgets.

Trains the accuracy benchmark's MobileNetV2-style CNN on Fashion-MNIST (``accuracy.py``: 20,000
images, 3 epochs; nothing is downloaded), builds one latency table (ONNX Runtime CPU, 1 thread),
one ICML'23 importance table and the LayerMerge variant tables, all scored by the Fisher proxy
on 256 calibration images (the scale ``method="combined"`` mixes in one DP), then per method
and budget: top-1 with BN re-estimated before fine-tuning, after one epoch of
``depthfx.finetune`` (distilling from the original), the table's predicted speed-up and the
measured one (interleaved with the original, 1 thread).

Usage: python benchmarks/method_accuracy.py [--methods icml23 combined] [--budgets 0.75 0.6]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from accuracy import mbv2_small, train

import depthfx
from depthfx.data import load_dataset
from depthfx.errors import InfeasibleBudget
from depthfx.finetune import evaluate
from depthfx.measure.importance import measure_importance
from depthfx.measure.layermerge_plan import METHODS, variant_tables
from depthfx.passes.analyze import analyze
from depthfx.solver import LatencyTable


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=["icml23", "combined"], choices=METHODS)
    p.add_argument("--budgets", nargs="+", type=float, default=[0.75, 0.6])
    p.add_argument("--cache", type=Path, default=Path("/tmp/depthfx-method-accuracy"))
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    train_set = load_dataset("fashion-mnist[:20000]")
    calib = load_dataset("fashion-mnist[50000:]").tensors[0][:256]
    test = load_dataset("fashion-mnist-test[:5000]")
    x = test.tensors[0][:1]
    t0 = time.perf_counter()
    model = mbv2_small()
    train(model, train_set, epochs=3)
    print(f"original top-1 {evaluate(model, test)[1]:.2f}% ({time.perf_counter() - t0:.0f} s)")
    lat_opts = {"threads": 1, "cache_dir": args.cache}
    latency = LatencyTable.measure(model, x, backend="onnxruntime", **lat_opts)
    importance = measure_importance(model, x, calib, latency=latency, progress=False)
    analysis = analyze(model, (x,), training=False)
    variants = variant_tables(model, (x,), calib, analysis, latency_options=lat_opts)
    print(f"{'method':>10} {'budget':>6} {'convs':>5} {'pruned':>6} {'top1 BN':>8} "
          f"{'top1 1ep':>8} {'pred x':>6} {'meas x':>6}")  # fmt: skip
    for method in args.methods:
        for budget in args.budgets:
            opts = {"latency": latency, "importance": importance, "method": method}
            if method != "icml23":
                opts["variants"] = variants
            try:
                plan = depthfx.plan(model, x, budget, **opts)
            except InfeasibleBudget as err:
                print(f"{method:>10} {budget:>6} infeasible (needs {err.fraction:.3f})")
                continue
            prepared = depthfx.prepare(model, plan, (x,))
            depthfx.recalibrate_bn(prepared, calib)
            recal = evaluate(depthfx.convert(prepared, plan, (x,)), test)[1]
            depthfx.finetune(prepared, train_set, epochs=1, lr=0.02, batch_size=128,
                             distill_from=model, progress=False)  # fmt: skip
            fast = depthfx.convert(prepared, plan, (x,))
            tuned = evaluate(fast, test)[1]
            measured = depthfx.compare(model, fast, (x,), threads=1, rounds=10, block_s=0.2)
            assert plan.predicted_ms is not None
            predicted = latency.meta["end_to_end_ms"] / plan.predicted_ms
            convs = sum(len(c.groups()) for c in plan.chains)
            pruned = sum(len(c.pruned) for c in plan.chains)
            print(f"{method:>10} {budget:>6} {convs:>5} {pruned:>6} {recal:>8.2f} {tuned:>8.2f} "
                  f"{predicted:>6.2f} {measured.speedup:>6.2f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
