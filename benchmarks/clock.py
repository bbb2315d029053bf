"""Wall clock vs thread CPU time of one-thread ONNX Runtime runs, with and without other load.

Times a block (256→256 3×3 conv, ReLU, 256→1024 1×1 conv at 14×14: a ResNet-50 layer3 piece)
on ONNX Runtime CPU, 1 thread, with ``clock="wall"`` and ``clock="cpu"`` in alternating rounds,
first with the machine as it is, then while ``--busy`` more processes spin on its cores. Prints
the median, min and max over rounds of both clocks: the spread of the thread CPU time is what a
latency table built on a shared machine inherits (see README "Latency tables").

Usage: python benchmarks/clock.py [--busy 2] [--rounds 6]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics

import torch
from torch import nn

from depthfx.backends.base import get_backend


def spin() -> None:
    while True:
        pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--busy", type=int, default=os.cpu_count() or 2, help="busy processes")
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args()
    torch.set_num_threads(1)
    net = nn.Sequential(nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.Conv2d(256, 1024, 1))
    x = torch.randn(1, 256, 14, 14)
    runs = {c: get_backend("onnxruntime", clock=c).prepare(net, (x,)) for c in ("wall", "cpu")}
    print(f"{'load':>10} {'clock':>6} {'median ms':>10} {'min':>7} {'max':>7}")
    for label, busy in (("as is", 0), (f"+{args.busy} busy", args.busy)):
        workers = [mp.Process(target=spin, daemon=True) for _ in range(busy)]
        for w in workers:
            w.start()
        medians: dict[str, list[float]] = {c: [] for c in runs}
        for _ in range(args.rounds):  # alternate the clocks so load hits both alike
            for clock, run in runs.items():
                medians[clock].append(run.time(warmup_s=0.05, blocks=5, block_s=0.1).median_ms)
        for w in workers:
            w.terminate()
        for clock, values in medians.items():
            print(f"{label:>10} {clock:>6} {statistics.median(values):10.3f} "
                  f"{min(values):7.3f} {max(values):7.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
