"""Fine-tuning speed: training-step time of the prepared network against the original.

A prepared network is slower to train than the original: each merge group pads its input once
by the group's total padding, so every map inside the group is enlarged by the padding of the
convs after it. This measures, for torchvision MobileNetV2 and a plan at ``--budget`` of a
synthetic latency table (cost √(j − i) per merged block, importance −(activations removed)),
the time of one SGD training step (forward, backward, update) of both networks at batch
``--batch``, per input size, with channels_last on and off and torch.compile on and off, timed
interleaved (original, prepared, original, …) in one process; ``--profile`` adds where the time
goes (self CPU time by operator).

Usage: python benchmarks/finetune_speed.py [--sizes 64,224] [--batch 128] [--steps 3]
       [--threads 2] [--compile] [--profile]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import depthfx
from depthfx.passes.analyze import analyze
from depthfx.plans import Plan
from depthfx.solver import ImportanceTable, LatencyTable


def synthetic_plan(model: nn.Module, x: torch.Tensor, budget: float) -> Plan:
    """A plan of ``model`` at ``budget`` on synthetic tables (module docstring)."""
    analysis = analyze(model, (x,), training=False)
    times = {(c.index, i, j): (j - i) ** 0.5 for c in analysis.chains for i, j in c.valid_blocks()}
    total = 1.0 + sum(c.num_convs for c in analysis.chains)
    latency = LatencyTable.from_entries(times, meta={"end_to_end_ms": total, "fixed_ms": 1.0})
    scores = {}
    for chain in analysis.chains:
        acts = chain.default_acts
        for st, end, sa, ea in chain.extended_blocks():
            removed = sum(p in acts for p in range(st + 1, end)) + (end in acts and not ea)
            scores[chain.index, st, end, sa, ea] = -float(removed)
    importance = ImportanceTable.from_entries(
        scores, norm="none", default_acts={c.index: c.default_acts for c in analysis.chains}
    )
    return depthfx.plan(model, (x,), budget, latency=latency, importance=importance)


def step_fn(model: nn.Module, compiled: bool) -> Callable[[torch.Tensor, torch.Tensor], None]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    forward = torch.compile(model) if compiled else model

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = F.cross_entropy(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def profile(name: str, step: Callable[..., None], x: torch.Tensor, y: torch.Tensor) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    with prof(activities=[ProfilerActivity.CPU]) as p:
        step(x, y)
    rows = sorted(p.key_averages(), key=lambda e: -e.self_cpu_time_total)[:8]
    total = sum(e.self_cpu_time_total for e in p.key_averages()) / 1e3
    top = ", ".join(f"{e.key} {e.self_cpu_time_total / 1e3:.0f}" for e in rows)
    print(f"    {name}: {total:.0f} ms self CPU: {top}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="64,224")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--budget", type=float, default=0.6)
    p.add_argument("--compile", action="store_true", help="also torch.compile for training")
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    original = torchvision.models.mobilenet_v2(weights=None).eval()
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}")
    print(f"{'size':>5} {'channels_last':>13} {'compile':>7} {'orig ms':>8} {'prep ms':>8} "
          f"{'ratio':>6}")  # fmt: skip
    for size in (int(s) for s in args.sizes.split(",")):
        x1 = torch.zeros(1, 3, size, size)
        plan = synthetic_plan(original, x1, args.budget)
        prepared = depthfx.prepare(original, plan, (x1,))
        x = torch.randn(args.batch, 3, size, size)
        y = torch.randint(0, 1000, (args.batch,))
        for compiled in (False, True) if args.compile else (False,):
            for cl in (False, True):
                fmt = torch.channels_last if cl else torch.contiguous_format
                nets = [m.train().to(memory_format=fmt) for m in (original, prepared)]
                steps = [step_fn(n, compiled) for n in nets]
                xb = x.to(memory_format=fmt)
                for s in steps:  # warm-up (and compilation)
                    s(xb, y)
                times: list[list[float]] = [[], []]
                for _ in range(args.steps):
                    for i, s in enumerate(steps):
                        t0 = time.perf_counter()
                        s(xb, y)
                        times[i].append(1e3 * (time.perf_counter() - t0))
                a, b = (statistics.median(t) for t in times)
                print(f"{size:>5} {cl!s:>13} {compiled!s:>7} {a:>8.0f} {b:>8.0f} {b / a:>6.2f}",
                      flush=True)  # fmt: skip
                if args.profile and not compiled:
                    for name, s in zip(("original", "prepared"), steps, strict=True):
                        profile(name, s, xb, y)


if __name__ == "__main__":
    main()
