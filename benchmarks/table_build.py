"""Latency-table build time of torchvision MobileNetV2 at several input sizes and stride modes.

Why: merged kernels grow with the input (MobileNetV2 in general-stride mode reaches 96→1280
channels at 208×208 taps at 224×224, 20 GiB), so a table build must crop kernels to the input
and bound, never build, blocks the backend cannot load. This prints, per (size, mode), the
wall and CPU seconds of the whole build (ORT, 1 thread, in-context calibration off), the
blocks, the unique shapes, how many were bounded and how many of those because they cannot be
loaded (``meta["oversized"]``), and the largest merged conv that was actually timed.

    .venv/bin/python benchmarks/table_build.py [--sizes 32 64 96 224] [--modes general paper]
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision

from depthfx.measure.latency_table import measure_latency_table


def build(size: int, mode: str) -> str:
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(weights=None).eval()
    x = torch.randn(1, 3, size, size)
    wall, cpu = time.perf_counter(), time.process_time()
    table = measure_latency_table(
        model, (x,), threads=1, strided=mode, calibrate=False, progress=False
    )
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    m = table.meta
    bounded = set(m["bounded"])
    timed = [b["shape"] for k, b in m["blocks"].items() if k not in bounded]
    widest = max(timed, key=lambda s: int(s.split(" k")[1].split("x")[0]))
    return (
        f"| {size}×{size} | {mode} | {wall:.0f} | {cpu:.0f} | {len(table.times)} | "
        f"{m['unique_shapes']} | {len(bounded)} | {len(m['oversized'])} | {widest} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 96, 224])
    parser.add_argument("--modes", nargs="+", default=["general", "paper"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    head = ["input", "strides", "wall s", "CPU s", "blocks", "shapes", "bounded", "oversized"]
    print("| " + " | ".join([*head, "widest timed"]) + " |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mode in args.modes:
        for size in args.sizes:
            print(build(size, mode), flush=True)


if __name__ == "__main__":
    main()
