"""Parallel importance tables: the wall time of one finetune-method table (>= 40 entries)
serial vs ``processes`` vs ``ray`` with N workers on this machine, and the driver's peak memory.

Usage: .venv/bin/python benchmarks/distributed.py [--workers 2] [--convs 9] [--width 32]
       [--epochs 0.5] [--executors serial,processes,ray]

The model is a CNN of ``--convs`` 3×3 convs (one chain: ``convs·(convs+1)/2`` entries) trained
on scikit-learn's digits; every entry fine-tunes it for ``--epochs`` on 1400 digits and scores
it on the other 397. Each executor runs in a driver process of its own (this script with
``--run EXECUTOR``), so each peak RSS (``ru_maxrss``) is that driver's alone, and the times
include starting the workers (a local Ray cluster for ``ray``); CPU is the user + system time
of the driver and of its workers (not for Ray, whose workers are not the driver's children):
what the run cost whatever else ran on the machine. Every entry
runs on one torch thread, the serial run too, so the tables must be equal bit for bit: checked.
The load average is printed before and after each run (the machine may be shared).

First it measures the machine's own ceiling: a fixed single-threaded torch workload (the
forward and backward of this CNN on a batch of digits) run once alone and then as ``--workers``
copies at once, each in a process of its own. ``ceiling = workers × t_alone / t_together`` is
the most any executor can gain here: where cores share caches, memory bandwidth or a physical
core (a VM's vCPUs), a busy neighbour slows each copy down, whatever runs the jobs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from depthfx.measure.importance import entries_of, measure_importance
from depthfx.passes.analyze import analyze

X1 = torch.zeros(1, 1, 8, 8)


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0, torch.tensor(d.target)


def cnn(convs: int, width: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [nn.Conv2d(1 if i == 0 else width, width, 3, padding=1, bias=False),
                   nn.BatchNorm2d(width), nn.ReLU()]  # fmt: skip
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(width * 64, 10))


def trained(convs: int, width: int) -> nn.Module:
    """The CNN after 200 Adam steps on the training digits (seeded: the same every time)."""
    torch.manual_seed(0)
    model = cnn(convs, width)
    x, y = digits()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        idx = torch.randint(0, 1400, (64,), generator=gen)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def run_one(executor: str, args: argparse.Namespace) -> dict[str, object]:
    """One table in this process; its wall time, this driver's peak RSS, the scores' digest."""
    torch.set_num_threads(1)
    model = cnn(args.convs, args.width)
    model.load_state_dict(torch.load(args.weights, weights_only=True))
    model.eval()
    x, y = digits()
    options = {
        "serial": None,
        "processes": {"workers": args.workers, "threads": 1},
        "ray": {"local_cpus": args.workers, "num_cpus": 1},
    }[executor]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    table = measure_importance(
        model, X1, method="finetune", train_data=(x[:1400], y[:1400]),
        val_data=(x[1400:], y[1400:]), epochs=args.epochs, batch_size=64, progress=False,
        executor=executor, executor_options=options,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    cpu = sum(
        u.ru_utime + u.ru_stime
        for u in (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
    )
    scores = json.dumps([[*k, v] for k, v in table.scores.items()])
    return {
        "executor": executor,
        "entries": len(table.scores),
        "wall_s": wall,
        "cpu_s": None if executor == "ray" else cpu,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "digest": hashlib.sha256(scores.encode()).hexdigest()[:16],
        "load_before": load,
        "load_after": os.getloadavg()[0],
    }


def workload(convs: int, width: int, start: float, steps: int = 60) -> float:
    """Seconds of one fixed training workload on one torch thread (the ceiling's unit), begun
    at wall time ``start`` so that copies started together overlap only in their workloads."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = cnn(convs, width)
    x, y = digits()
    time.sleep(max(0.0, start - time.time()))
    t0 = time.perf_counter()
    for step in range(steps):
        idx = slice(64 * (step % 20), 64 * (step % 20 + 1))
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
    return time.perf_counter() - t0


def ceiling(args: argparse.Namespace) -> tuple[float, float, float]:
    """(alone s, together s, ceiling): the workload alone, then ``workers`` copies at once."""

    def run(copies: int) -> float:
        argv = [sys.executable, __file__, *sys.argv[1:], "--run", "workload",
                "--start", str(time.time() + 15)]  # fmt: skip
        procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(copies)]
        return max(float(p.communicate()[0].strip().splitlines()[-1]) for p in procs)

    alone = min(run(1) for _ in range(2))
    together = min(run(args.workers) for _ in range(2))
    return alone, together, args.workers * alone / together


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--convs", type=int, default=9)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--epochs", type=float, default=0.5)
    p.add_argument("--executors", default="serial,processes,ray")
    p.add_argument("--run", default=None, help=argparse.SUPPRESS)
    p.add_argument("--weights", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--start", type=float, default=0.0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.run == "workload":
        print(workload(args.convs, args.width, args.start))
        return
    if args.run is not None:
        print(json.dumps(run_one(args.run, args)))
        return

    torch.set_num_threads(1)
    model = trained(args.convs, args.width)
    n = len(entries_of(analyze(model, X1, training=False)))
    print(f"CNN of {args.convs} convs × {args.width} channels on digits: {n} entries, "
          f"{args.epochs:g} epoch(s) of fine-tuning each; {os.cpu_count()} cores, "
          f"{args.workers} workers, 1 torch thread per entry")  # fmt: skip
    alone, together, most = ceiling(args)
    print(f"machine ceiling: a fixed 1-thread workload takes {alone:.2f} s alone, "
          f"{together:.2f} s as {args.workers} copies at once: at most {most:.2f}× "
          f"with {args.workers} workers (load {os.getloadavg()[0]:.1f})", flush=True)  # fmt: skip
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights.pt"
        torch.save(model.state_dict(), weights)
        for executor in args.executors.split(","):
            argv = [*sys.argv[1:], "--run", executor, "--weights", str(weights)]
            out = subprocess.run([sys.executable, __file__, *argv], capture_output=True,
                                 text=True, check=True)  # fmt: skip
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = results[-1]
            cpu = "   n/a" if r["cpu_s"] is None else f"{r['cpu_s']:6.1f}"
            print(f"{executor:>10}: {r['wall_s']:7.1f} s  CPU {cpu} s  driver peak RSS "
                  f"{r['peak_rss_mb']:6.0f} MB  load {r['load_before']:.1f} -> "
                  f"{r['load_after']:.1f}", flush=True)  # fmt: skip
    base = next((r for r in results if r["executor"] == "serial"), None)
    if base is not None:
        for r in results:
            if r is not base:
                gain = base["wall_s"] / r["wall_s"]
                print(f"{r['executor']} speed-up over serial: {gain:.2f}× "
                      f"({gain / most:.0%} of the machine's ceiling)")  # fmt: skip
    digests = {r["digest"] for r in results}
    print("tables equal bit for bit" if len(digests) == 1 else f"TABLES DIFFER: {digests}")


if __name__ == "__main__":
    main()
