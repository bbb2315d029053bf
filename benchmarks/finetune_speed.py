"""Fine-tuning speed: training-step time of the prepared network against the original.

A prepared network is slower to train than the original: each merge group pads its input once
by the group's total padding, so every map inside the group is enlarged by the padding of the
convs after it. This measures, for torchvision MobileNetV2 and a plan at ``--budget`` of a
synthetic latency table (cost √(j − i) per merged block, importance −(activations removed)),
the time of one SGD training step (forward, backward, update) at batch ``--batch`` of the
original and of what ``depthfx.finetune`` trains for each ``borders=``: "full" (the prepared
network), "exact" (the ring-skipping view, same function), "approximate" (original paddings,
opt-in, border error), per input size, memory format and torch.compile on/off, timed
interleaved (one step of each in turn) in one process; ``--profile`` adds where the time goes
(self CPU time by operator).

Usage: python benchmarks/finetune_speed.py [--sizes 64,224] [--batch 128] [--steps 3]
       [--threads 2] [--formats contiguous,channels_last] [--compile] [--profile]
       [--nets original,full,exact,approximate]  (the original is always timed)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import depthfx
from depthfx.finetune import training_view
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


def step_times(
    nets: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor, steps: int, compiled: bool
) -> dict[str, float]:
    """Median ms of one training step per network, timed interleaved (one step of each in
    turn, ``steps`` rounds) after one warm-up step each."""
    fns = {name: step_fn(net, compiled) for name, net in nets.items()}
    for fn in fns.values():  # warm-up (and compilation)
        fn(x, y)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(steps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(x, y)
            times[name].append(1e3 * (time.perf_counter() - t0))
    return {name: statistics.median(t) for name, t in times.items()}


def group_costs(original: nn.Module, prepared: nn.Module, exact: nn.Module, size: int) -> None:
    """Per multi-conv group: forward conv MFLOP (batch 1) of the original's convs, of the
    prepared network's (enlarged maps) and of the exact view's (live boxes only)."""
    from depthfx.passes.ring_ops import ring_conv

    def flop(conv: nn.Conv2d, out_hw: tuple[int, int]) -> float:
        kh, kw = conv.kernel_size
        return out_hw[0] * out_hw[1] * conv.out_channels * conv.in_channels // conv.groups * kh * kw

    shapes: dict[str, tuple[int, int]] = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, o.shape[2:]))
             for n, m in original.named_modules() if isinstance(m, nn.Conv2d)]  # fmt: skip
    with torch.no_grad():
        original.eval()(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    full = {n.target: n.meta["tensor_meta"].shape[2:] for n in prepared.graph.nodes
            if n.op == "call_module" and "tensor_meta" in n.meta}  # fmt: skip
    live = {}
    for node in exact.graph_module.graph.nodes:
        if node.target is ring_conv:
            name = node.args[2].target.rsplit(".", 1)[0]
            conv = prepared.get_submodule(name)
            (r0, r1), (c0, c1) = node.args[8]
            span = [d * (k - 1) + 1 for d, k in zip(conv.dilation, conv.kernel_size, strict=True)]
            live[name] = ((r1 - r0 - span[0]) // conv.stride[0] + 1,
                          (c1 - c0 - span[1]) // conv.stride[1] + 1)  # fmt: skip
    print(f"  per group at {size}x{size}, forward conv MFLOP (batch 1):")
    print(f"  {'group':>9} {'convs':>5} {'pad':>4} {'original':>9} {'full':>9} {'exact':>9}")
    for g in prepared.depthfx_prepared.groups:
        if len(g.convs) < 2:
            continue
        convs = [(c.module, prepared.get_submodule(c.module)) for c in g.convs]
        cost = [sum(flop(m, where.get(n, full[n])) for n, m in convs) / 1e6
                for where in (shapes, full, live)]  # fmt: skip
        print(f"  {g.start:>4}-{g.end:<4} {len(convs):>5} {g.pad[0]:>4} "
              + " ".join(f"{c:>9.1f}" for c in cost))  # fmt: skip


def border_accuracy(steps: int, budget: float) -> None:
    """The approximate mode on a real task: ``benchmarks/accuracy.py``'s MobileNetV2-style CNN
    trained on Fashion-MNIST (28×28), a plan at ``budget`` of the synthetic tables, fine-tuned
    ``steps`` steps (batch 64, distilling) per ``borders``; top-1 of what was trained (the view)
    and of the merged network, the border error, and the fine-tuning wall time."""
    from accuracy import mbv2_small, train

    from depthfx.data import load_dataset
    from depthfx.finetune import evaluate
    from depthfx.passes.original_padding import border_error

    torch.manual_seed(0)
    train_set = load_dataset("fashion-mnist[:6000]")
    test = load_dataset("fashion-mnist-test[:2000]")
    model = mbv2_small()
    train(model, train_set, epochs=2)
    x = test.tensors[0][:1]
    plan = synthetic_plan(model, x, budget)
    print(f"Fashion-MNIST: original top-1 {evaluate(model, test)[1]:.2f}%, plan at {budget}: "
          f"{sum(len(c.merge_pos) for c in plan.chains)} merged convs")  # fmt: skip
    print(f"{'borders':>12} {'finetune s':>10} {'view top-1':>10} {'merged top-1':>12} "
          f"{'border err':>10} {'max |out|':>9}")  # fmt: skip
    for borders in ("full", "exact", "approximate"):
        prepared = depthfx.prepare(model, plan, (x,))
        t0 = time.perf_counter()
        depthfx.finetune(prepared, train_set, steps=steps, batch_size=64, lr=0.01,
                         distill_from=model, borders=borders, progress=False)  # fmt: skip
        seconds = time.perf_counter() - t0
        view = training_view(prepared, borders)[0].eval()
        merged = depthfx.convert(prepared, plan, (x,))
        err, scale = border_error(prepared, view, test.tensors[0][:256])
        print(
            f"{borders:>12} {seconds:>10.1f} {evaluate(view, test)[1]:>9.2f}% "
            f"{evaluate(merged, test)[1]:>11.2f}% {err:>10.2e} {scale:>9.2f}",
            flush=True,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="64,224")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=3, help="0: the per-group costs only")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--budget", type=float, default=0.6)
    p.add_argument("--formats", default="contiguous,channels_last")
    p.add_argument("--compile", action="store_true", help="also torch.compile for training")
    p.add_argument("--nets", default="original,full,exact,approximate", help="which to time")
    p.add_argument("--profile", action="store_true")
    p.add_argument(
        "--accuracy",
        type=int,
        default=0,
        metavar="STEPS",
        help="also the approximate mode on Fashion-MNIST, fine-tuned STEPS steps",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    original = torchvision.models.mobilenet_v2(weights=None).eval()
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, "
          f"load average {os.getloadavg()[0]:.2f} at start")  # fmt: skip
    names = tuple(dict.fromkeys(["original", *args.nets.split(",")]))
    print(f"{'size':>5} {'format':>13} {'compile':>7} "
          + " ".join(f"{n + ' ms':>14}" for n in names)
          + " " + " ".join(f"{n + '/orig':>16}" for n in names[1:]))  # fmt: skip
    for size in (int(s) for s in args.sizes.split(",") if s):
        x1 = torch.zeros(1, 3, size, size)
        plan = synthetic_plan(original, x1, args.budget)
        prepared = depthfx.prepare(original, plan, (x1,))
        views = {b: training_view(prepared, b)[0] for b in ("full", "exact", "approximate")}
        chosen = {b: v for b, v in views.items() if b in names}
        group_costs(original, prepared, views["exact"], size)
        x = torch.randn(args.batch, 3, size, size)
        y = torch.randint(0, 1000, (args.batch,))
        for compiled in ((False, True) if args.compile else (False,)) if args.steps > 0 else ():
            for fmt_name in args.formats.split(","):
                fmt = getattr(torch, fmt_name if fmt_name != "contiguous" else "contiguous_format")
                original.to(memory_format=fmt)
                prepared.to(memory_format=fmt)
                nets = {"original": original.train(), **{b: v.train() for b, v in chosen.items()}}
                ms = step_times(nets, x.to(memory_format=fmt), y, args.steps, compiled)
                ratios = " ".join(f"{ms[n] / ms['original']:>16.2f}" for n in names[1:])
                print(f"{size:>5} {fmt_name:>13} {compiled!s:>7} "
                      + " ".join(f"{ms[n]:>14.0f}" for n in names) + f" {ratios}",
                      flush=True)  # fmt: skip
                if args.profile and not compiled:
                    for name, net in nets.items():
                        profile(name, step_fn(net, False), x.to(memory_format=fmt), y)
    if args.accuracy:
        border_accuracy(args.accuracy, args.budget)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
