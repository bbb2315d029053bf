"""Accuracy benchmark: what compression costs before and after fine-tuning, and which cheap
importance method ranks table entries like the paper's per-entry fine-tune.

Trains a MobileNetV2-style CNN on Fashion-MNIST (Debian ``dataset-fashion-mnist``; nothing is
downloaded), then

1. per budget (0.75, 0.7, 0.6 and the fastest feasible plan): top-1 of the merged network
   before fine-tuning, plain and with BN re-estimated (``depthfx.recalibrate_bn``), after one
   epoch of ``depthfx.finetune`` (distilling from the original), the latency table's predicted
   speed-up and the measured one on ONNX Runtime CPU at 1 and 2 threads (interleaved with the
   original); first the table's single-conv entries and calibration fit, what the predictions
   rest on;
2. on a random sample of table entries that merge at least two convs: each entry fine-tuned
   the paper's way (spec §3.2: SGD, Nesterov, cosine, one epoch on a holdout-train split,
   Δ held-out top-1) as the reference, and the Spearman ρ of every cheap method against it:
   the Fisher proxy, the exact proxy, the proxy with BN re-estimation (two passes on 256, 64,
   32 and 16 of the calibration images; one pass on 256, 32 and 16), the distillation method
   (−KL and Δ top-1), with their times (``--rows``: only the rows whose name has one of these;
   the reference fine-tunes are cached, so a rerun costs only the rows);
3. ``--cost-only``: what the methods cost on torchvision MobileNetV2 at 224×224 (random weights:
   cost only, scores not used) on ``--cost-images`` Fashion-MNIST test images: the Fisher
   proxy's whole table; the BN-re-estimated proxy on every ``--cost-every``-th entry (a sparse
   shard shares fewer heads than the whole table, so its extrapolation is an upper bound), and
   on the same entries each whole network re-estimated and run alone (the implementation
   before heads were shared), interleaved ``--cost-rounds`` times; distillation on one entry at
   two step counts, extrapolated. Wall and CPU seconds (1 thread: CPU time is the work, wall
   time also the machine's load).

Usage: python benchmarks/accuracy.py [--quick] [--threads 1] [--entries 30] [--seed 0]
       [--budgets 0.75 0.7 0.6 fastest] [--skip-budgets] [--skip-rho] [--rows ...]
       [--skip-distill]
       [--cost-only] [--cost-images 64] [--cost-every 25] [--cost-rounds 1]
       [--cost-skip fisher distill]
"""

from __future__ import annotations

import argparse
import copy
import math
import random
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import depthfx
from depthfx.data import load_dataset
from depthfx.errors import InfeasibleBudget
from depthfx.finetune import as_loader, evaluate
from depthfx.measure.importance import (
    entries_of,
    entry_plan,
    fastest_merges,
    measure_importance,
)
from depthfx.measure.importance.digests import latency_digest
from depthfx.measure.importance.distill import distill_experiment
from depthfx.measure.importance.experiments import run_experiments
from depthfx.measure.importance.finetune import finetune_experiment
from depthfx.measure.prediction import latency_model as table_latency_model
from depthfx.passes.analyze import analyze
from depthfx.solver import ImportanceKey, LatencyTable


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout)]  # fmt: skip


class Block(nn.Module):
    """MobileNetV2's inverted residual: 1×1 expand, 3×3 depthwise (stride s), 1×1 project,
    identity when the shapes agree."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        h = cin * expand
        self.body = nn.Sequential(
            *conv_bn(cin, h, 1), nn.ReLU6(inplace=True),
            *conv_bn(h, h, 3, stride, groups=h), nn.ReLU6(inplace=True),
            *conv_bn(h, cout, 1),
        )  # fmt: skip
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


def mbv2_small(width: int = 16, classes: int = 10) -> nn.Sequential:
    """Stem, then (out, stride, blocks) stages as MobileNetV2 at a 28×28 scale: one chain."""
    layers: list[nn.Module] = [*conv_bn(1, width, 3), nn.ReLU6(inplace=True)]
    cin = width
    for cout, stride, n in ((width, 1, 1), (24, 2, 2), (32, 2, 2), (48, 1, 2)):
        for i in range(n):
            layers.append(Block(cin, cout, stride if i == 0 else 1, 1 if cin == width else 4))
            cin = cout
    layers += [*conv_bn(cin, 128, 1), nn.ReLU6(inplace=True), nn.AdaptiveAvgPool2d(1),
               nn.Flatten(), nn.Linear(128, classes)]  # fmt: skip
    return nn.Sequential(*layers)


def train(model: nn.Module, data: Any, epochs: int, lr: float = 0.01) -> None:
    """AdamW + one-cycle, batch 128: any training works, depthfx is not involved yet."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * len(as_loader(data, 128, shuffle=False))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for epoch in range(epochs):
        for x, y in as_loader(data, 128, shuffle=True, epoch=epoch):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman ρ with average ranks for ties (Δ top-1 values tie often)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def budget_rows(model: nn.Module, x: torch.Tensor, latency: LatencyTable, sets: dict[str, Any],
                budgets: list[Any], finetune_epochs: float) -> None:  # fmt: skip
    """Part 1: top-1 before (plain / BN re-estimated) and after fine-tuning, speed-ups."""
    calib, train_data, test = sets["calib"], sets["train"], sets["test"]
    importance = measure_importance(model, x, calib, latency=latency, progress=False)
    latency_noise(latency)
    original_ms = table_latency_model(latency).end_to_end_ms
    print(f"\n{'budget':>8} {'convs':>5} {'top1 plain':>10} {'top1 BN':>8} "
          f"{'top1 1ep':>8} {'pred. x':>7} {'speedup 1t':>10} {'speedup 2t':>10} "
          f"{'ft s':>6}")  # fmt: skip
    for budget in budgets:
        options = {"latency": latency, "importance": importance}
        try:
            plan = depthfx.plan(model, x, budget if budget != "fastest" else 1e-6, **options)
        except InfeasibleBudget as err:  # the fastest plan: the minimum feasible budget
            plan = depthfx.plan(model, x, None, budget_ms=err.minimum * 1.01, **options)
        prepared = depthfx.prepare(model, plan, (x,))
        plain = evaluate(depthfx.convert(prepared, plan, (x,)), test)[1]
        depthfx.recalibrate_bn(prepared, calib)
        recal = evaluate(depthfx.convert(prepared, plan, (x,)), test)[1]
        t0 = time.perf_counter()
        depthfx.finetune(prepared, train_data, epochs=finetune_epochs, lr=0.02, batch_size=128,
                         distill_from=model, progress=False)  # fmt: skip
        ft_s = time.perf_counter() - t0
        fast = depthfx.convert(prepared, plan, (x,))
        tuned = evaluate(fast, test)[1]
        speed = [depthfx.compare(model, fast, (x,), threads=t, rounds=5, block_s=0.2).speedup
                 for t in (1, 2)]  # fmt: skip
        convs = sum(len(c.groups()) for c in plan.chains)
        predicted = original_ms / plan.predicted_ms  # the table's speed-up (1 thread)
        print(f"{budget!s:>8} {convs:>5} {plain:>10.2f} {recal:>8.2f} {tuned:>8.2f} "
              f"{predicted:>7.2f} {speed[0]:>10.2f} {speed[1]:>10.2f} {ft_s:>6.0f}",
              flush=True)  # fmt: skip


def latency_noise(latency: LatencyTable) -> None:
    """What the latency table was measured on: its single-conv entries (a tiny model's convs
    take microseconds, so a loaded machine shows in them first), their spread, the
    calibration fit and its residuals. A plan's predicted speed-up is only as good as these."""
    entries = latency.times
    blocks = latency.meta.get("blocks", {})
    singles = sorted(k for k in entries if k[2] - k[1] == 1)
    iqr = {k: blocks.get(",".join(map(str, k)), {}).get("iqr_ms") or 0.0 for k in singles}
    print(
        "single convs (µs, median ± IQR):",
        ", ".join(f"{k[2]}: {entries[k] * 1e3:.0f}±{iqr[k] * 1e3:.0f}" for k in singles),
    )
    cal = latency.meta.get("calibration", {})
    print(f"sum of singles {latency.meta.get('original_chain_ms', math.nan):.3f} ms, whole model "
          f"{table_latency_model(latency).end_to_end_ms:.3f} ms, calibration {cal.get('status')}: "
          f"fixed {cal.get('fixed_ms', math.nan):.3f} ms + {cal.get('scale', math.nan):.3f} × "
          f"ΣT, residuals {[round(r, 3) for r in cal.get('residuals_ms', [])]} ms, points "
          f"{[(round(p['original_ms'], 3), round(p['plan_ms'], 3)) for p in cal.get('points', [])]}"
          " (original ms, plan ms)")  # fmt: skip


def rho_table(model: nn.Module, x: torch.Tensor, latency: LatencyTable, sets: dict[str, Any],
              args: argparse.Namespace) -> None:  # fmt: skip
    """Part 2: the reference fine-tune on sampled entries, ρ of each cheap method."""
    analysis = analyze(model, x, training=False)
    merges, merge_id = fastest_merges(analysis, latency), latency_digest(latency)
    pool = [k for k in entries_of(analysis) if k[2] - k[1] >= 2]
    count = min(args.entries, len(pool))
    keys: list[ImportanceKey] = sorted(random.Random(args.seed).sample(pool, count))
    calib, holdout_train, holdout_val = sets["calib"], sets["ht"], sets["hv"]

    def experiment(exp: Any) -> tuple[dict[ImportanceKey, list[float]], float]:
        t0 = time.perf_counter()
        cache = args.cache.with_name(f"{args.cache.name}-{exp.name}-{args.seed}")
        res = run_experiments(model, analysis, keys, exp, merges, merge_id, cache=cache,
                              progress=False)  # fmt: skip
        return res.metrics, time.perf_counter() - t0

    ref_exp = finetune_experiment(holdout_train, holdout_val, epochs=1, steps=None, lr=0.02,
                                  batch_size=128, train_metrics=False, seed=args.seed,
                                  progress=False)  # fmt: skip
    ref, ref_s = experiment(ref_exp)
    truth = [ref[k][0] for k in keys]  # val_acc delta (pp): the score column comes first
    print(f"reference: {ref_s:.0f} s, Δ top-1 {sorted(round(t, 1) for t in truth)}", flush=True)
    rows: list[tuple[str, list[float], float, int]] = []
    for name, opts in (("proxy fisher", {}), ("proxy exact", {"estimate": "exact"}),
                       ("proxy + BN re-est.", {"bn_recalibration": True}),
                       ("proxy + BN re-est., 64 images", {"bn_recalibration": True, "images": 64}),
                       ("proxy + BN re-est., 32 images",
                        {"bn_recalibration": True, "images": 32}),
                       ("proxy + BN re-est., 16 images",
                        {"bn_recalibration": True, "images": 16}),
                       ("proxy + BN one-pass", {"bn_recalibration": "one-pass"}),
                       ("proxy + BN one-pass, 32 images",
                        {"bn_recalibration": "one-pass", "images": 32}),
                       ("proxy + BN one-pass, 16 images",
                        {"bn_recalibration": "one-pass", "images": 16})):  # fmt: skip
        if args.rows and not any(r in name for r in args.rows):
            continue
        t0 = time.perf_counter()
        table = measure_importance(model, x, calib, analysis=analysis, latency=latency,
                                   score="kl", progress=False, **opts)  # fmt: skip
        rows.append((name, [table.scores[k] for k in keys], time.perf_counter() - t0,
                     len(table.scores)))  # fmt: skip
        print(f"{name}: ρ {spearman(rows[-1][1], truth):.3f}", flush=True)
    n_all = len(entries_of(analysis))
    if args.skip_distill:
        return print_rho(rows, truth, keys, holdout_train, holdout_val, ref_s, n_all)
    dist_exp = distill_experiment(
        model, holdout_train, sets["calib_pair"], steps=args.distill_steps, lr=0.01,
        batch_size=32, seed=args.seed, labels=True,
    )  # fmt: skip
    dist, dist_s = experiment(dist_exp)
    rows.append((f"distill {args.distill_steps} steps −KL", [dist[k][0] for k in keys],
                 dist_s * n_all / len(keys), -n_all))  # fmt: skip
    rows.append((f"distill {args.distill_steps} steps Δtop1", [dist[k][1] for k in keys],
                 dist_s * n_all / len(keys), -n_all))  # fmt: skip
    print_rho(rows, truth, keys, holdout_train, holdout_val, ref_s, n_all)


def print_rho(rows: list[tuple[str, list[float], float, int]], truth: list[float], keys: list[Any],
              holdout_train: Any, holdout_val: Any, ref_s: float, n_all: int) -> None:  # fmt: skip
    """The ρ table of part 2."""
    print(
        f"\nρ against the paper's per-entry fine-tune (1 epoch, {len(holdout_train[0])} images,"
        f" Δ top-1 on {len(holdout_val[0])}), {len(keys)} of {n_all} entries; reference "
        f"{ref_s / len(keys):.1f} s/entry; Δ top-1 range {min(truth):.1f} … {max(truth):.1f}"
    )
    print(f"{'method':<32} {'rho':>6} {'table s (all entries)':>22}")
    for name, values, seconds, n in rows:
        note = " (extrapolated)" if n < 0 else ""
        print(f"{name:<32} {spearman(values, truth):>6.3f} {seconds:>10.1f}{note}")


def cost_table(args: argparse.Namespace) -> None:
    """Part 3: the cost of each method on torchvision MobileNetV2 224×224 (module docstring)."""
    import torchvision

    model = torchvision.models.mobilenet_v2(weights=None).eval()
    x, n, every = torch.zeros(1, 3, 224, 224), args.cost_images, args.cost_every
    xs, ys = load_dataset(f"fashion-mnist-test[:{n}]", input_shape=(3, 224, 224)).tensors
    t0 = time.perf_counter()
    cache = args.cache.with_name(f"{args.cache.name}-mbv2")
    latency = LatencyTable.measure(model, x, backend="onnxruntime", threads=1, cache_dir=cache)
    print(f"MobileNetV2 224: latency table {time.perf_counter() - t0:.0f} s", flush=True)
    analysis = analyze(model, x, training=False)
    keys, merges = entries_of(analysis), fastest_merges(analysis, latency)
    n_all = len(keys)
    rows: list[tuple[str, float, float, int]] = []  # name, wall s, CPU s, entries

    def timed(name: str, run: Any) -> None:
        t0, c0 = time.perf_counter(), time.process_time()
        done = run()
        rows.append((name, time.perf_counter() - t0, time.process_time() - c0, done))
        print(f"{name}: {rows[-1][1]:.0f} s ({rows[-1][2]:.0f} s CPU), {done} entries", flush=True)

    def table(shard: tuple[int, int] | None, **opts: Any) -> int:
        done = measure_importance(model, x, [(xs, ys)], analysis=analysis, latency=latency,
                                  images=n, score="kl", shard=shard, progress=False,
                                  **opts)  # fmt: skip
        return len(done.scores)

    def whole_networks() -> int:
        with torch.no_grad():
            for key in [None, *keys[::every]]:
                net = depthfx.prepare(copy.deepcopy(model), entry_plan(analysis, key, merges),
                                      (x,)).to(memory_format=torch.channels_last)  # fmt: skip
                depthfx.recalibrate_bn(net, xs, batch_size=64)
                net.eval()(xs.to(memory_format=torch.channels_last))
        return len(keys[::every])

    if "fisher" not in args.cost_skip:
        timed("proxy fisher", lambda: table(None))
    for _ in range(args.cost_rounds):  # interleaved: load changes hit both alike
        timed("proxy + BN re-est. (shared heads)", lambda: table((0, every), bn_recalibration=True))
        timed("  the same, whole networks", whole_networks)
    if "distill" not in args.cost_skip:
        steps = sorted({max(2, args.distill_steps // 25), max(4, args.distill_steps // 10)})
        seconds = []
        for k in steps:
            t0 = time.process_time()
            measure_importance(model, x, (xs, ys), "distill", analysis=analysis,
                               latency=latency, steps=k, batch_size=32, lr=0.01,
                               shard=(n_all // 2, n_all), progress=False)  # fmt: skip
            seconds.append(time.process_time() - t0)
        per_step = (seconds[1] - seconds[0]) / (steps[1] - steps[0])
        entry_s = seconds[0] + (args.distill_steps - steps[0]) * per_step
        rows.append((f"distill {args.distill_steps} steps of 32 (1 entry)", math.nan, entry_s, 1))
    print(f"\ntorchvision MobileNetV2 224×224, {n} images, {n_all} entries, "
          f"{torch.get_num_threads()} thread(s)")  # fmt: skip
    print(f"{'method':<36} {'wall s':>8} {'CPU s':>8} {'entries':>7} {'table CPU min':>14}")
    for name, sec, cpu, done in rows:
        whole = cpu if done == n_all else cpu * n_all / done
        print(f"{name:<36} {sec:>8.1f} {cpu:>8.1f} {done:>7} {whole / 60:>14.1f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sets, few entries and steps")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--entries", type=int, default=None)
    p.add_argument("--distill-steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budgets", nargs="+", default=["0.75", "0.7", "0.6", "fastest"])
    p.add_argument("--skip-budgets", action="store_true")
    p.add_argument("--skip-rho", action="store_true")
    p.add_argument("--rows", nargs="*", default=[], help="ρ rows whose name has one of these")
    p.add_argument("--skip-distill", action="store_true")
    p.add_argument("--cost-only", action="store_true", help="part 3 only (MobileNetV2 224)")
    p.add_argument("--cost-images", type=int, default=64)
    p.add_argument("--cost-every", type=int, default=25)
    p.add_argument("--cost-rounds", type=int, default=1)
    p.add_argument("--cost-skip", nargs="*", default=[], choices=["fisher", "distill"])
    p.add_argument("--cache", type=Path, default=Path("/tmp/depthfx-accuracy-latency"))
    args = p.parse_args()
    q = args.quick
    args.entries = args.entries or (12 if q else 30)
    args.distill_steps = args.distill_steps or (40 if q else 100)
    n_train, n_ht, n_hv, n_test = (6000, 3000, 1000, 2000) if q else (20000, 8000, 2000, 5000)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    if args.cost_only:
        cost_table(args)
        return
    train_set = load_dataset(f"fashion-mnist[:{n_train}]")
    xs, ys = load_dataset("fashion-mnist[50000:]").tensors
    sets = {
        "train": train_set,
        "calib": xs[:256],
        "calib_pair": (xs[:256], ys[:256]),
        "ht": (xs[256 : 256 + n_ht], ys[256 : 256 + n_ht]),
        "hv": (xs[-n_hv:], ys[-n_hv:]),
        "test": load_dataset(f"fashion-mnist-test[:{n_test}]"),
    }
    x = sets["test"].tensors[0][:1]
    t0 = time.perf_counter()
    model = mbv2_small()
    train(model, train_set, epochs=2 if q else 3)
    print(
        f"original: top-1 {evaluate(model, sets['test'])[1]:.2f}% after "
        f"{time.perf_counter() - t0:.0f} s of training ({n_train} images)",
        flush=True,
    )
    latency = LatencyTable.measure(model, x, backend="onnxruntime", threads=1,
                                   cache_dir=args.cache)  # fmt: skip
    if not args.skip_budgets:
        budgets = [b if b == "fastest" else float(b) for b in args.budgets]
        budget_rows(model, x, latency, sets, budgets, 1)
    if not args.skip_rho:
        rho_table(model, x, latency, sets, args)


if __name__ == "__main__":
    main()
