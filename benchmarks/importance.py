"""Importance-table benchmarks: proxy speed, and how well the proxy ranks like fine-tuning.

1. Proxy table time for torchvision MobileNetV2 at 224×224 with 256 proxy input images
   (Fashion-MNIST resized to 3×224×224 when installed, else random inputs) on ``--threads``
   CPU threads. ``--every K`` measures every K-th entry only and extrapolates the total
   (entries' costs are heavy-tailed: a sample misjudges it); ``--sample-images 4,8`` measures
   every entry at 4 and at 8 images and extrapolates linearly in the number of images.
2. On a small CNN trained on Fashion-MNIST: the Spearman rank correlation between proxy
   scores and the paper's fine-tuning scores (val_acc deltas), over all extended blocks.
   A high correlation means the proxy is good enough to rank blocks for that model.

Usage: .venv/bin/python benchmarks/importance.py [--threads 2] [--every 1] [--sample-images 4,8]
       [--skip-mbv2]
       [--skip-finetune]
       [--estimate fisher|exact]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from depthfx.data import load_dataset
from depthfx.errors import DepthFXError
from depthfx.measure.importance import entries_of, measure_importance
from depthfx.passes.analyze import analyze
from depthfx.solver import LatencyTable


def _spearman(a: list[float], b: list[float]) -> float:
    ra = np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(float)
    rb = np.argsort(np.argsort(b, kind="stable"), kind="stable").astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def mbv2_proxy(
    threads: int,
    every: int,
    images: int,
    estimate: str,
    sample_images: list[int] | None,
    latency: LatencyTable | None,
) -> None:
    import torchvision

    model = torchvision.models.mobilenet_v2(weights=None).eval()
    x = torch.zeros(1, 3, 224, 224)
    counts = sample_images or [images]
    try:
        data = load_dataset(f"fashion-mnist-test[:{max(counts)}]", input_shape=(3, 224, 224))
        inputs, kind = data.tensors[0], "fashion-mnist"
    except DepthFXError:
        inputs, kind = torch.randn(max(counts), 3, 224, 224), "random"
    analysis = analyze(model, x, training=False)
    n = len(entries_of(analysis))
    done = len(range(0, n, every))
    seconds = []
    for k in counts:
        t0 = time.perf_counter()
        measure_importance(model, x, [inputs[:k]], analysis=analysis, images=k, score="kl",
                           estimate=estimate, threads=threads, shard=(0, every),
                           latency=latency)  # fmt: skip
        seconds.append(time.perf_counter() - t0)
    measured = ", ".join(f"{k} images {t:.0f} s" for k, t in zip(counts, seconds, strict=True))
    if sample_images:
        # Every cost of the proxy is per image (base passes, regions) or fixed (region finding):
        # a line through two image counts extrapolates without sampling the heavy-tailed entries.
        (k1, t1), (k2, t2) = sorted(zip(counts, seconds, strict=True))[:2]
        per_image = (t2 - t1) / (k2 - k1)
        total = (t1 + (images - k1) * per_image) * n / done
        estimate_text = f"est. {images} images: {total / 60:.1f} min"
    else:
        estimate_text = f"est. full table: {seconds[0] * n / done / 60:.1f} min"
    print(
        f"| MobileNetV2 224x224, {kind} images, {threads} threads, {estimate}, merge groups "
        f"{'S = A' if latency is None else 'from the latency table'} | {n} entries, "
        f"{done} measured | {measured} | {estimate_text} |"
    )


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        chans = [1, 16, 16, 32, 32, 32]
        for i in range(5):
            stride = 2 if i in (1, 3) else 1
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, stride, 1, bias=False),
                       nn.BatchNorm2d(chans[i + 1]), nn.ReLU()]  # fmt: skip
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


def proxy_vs_finetune(threads: int, train_n: int, steps: int) -> None:
    import depthfx

    torch.set_num_threads(threads)
    train = load_dataset(f"fashion-mnist[:{train_n}]")
    val = load_dataset("fashion-mnist-test[:2000]")
    torch.manual_seed(0)
    model = Small()
    depthfx.finetune(model, train, epochs=2, lr=0.05, batch_size=128, progress=False)
    x = torch.zeros(1, 1, 28, 28)
    proxy_data = [(val.tensors[0][:256], val.tensors[1][:256])]
    proxies, times = {}, {}
    for estimate in ("fisher", "exact"):
        t0 = time.perf_counter()
        proxies[estimate] = measure_importance(
            model, x, proxy_data, score="kl", estimate=estimate, threads=threads, progress=False
        )
        times[estimate] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ft = measure_importance(model, x, method="finetune", train_data=train, val_data=val,
                            steps=steps, batch_size=128, lr=0.05, threads=threads)  # fmt: skip
    t_ft = time.perf_counter() - t0
    keys = list(ft.scores)
    ranked = {name: [t.scores[k] for k in keys] for name, t in (*proxies.items(), ("ft", ft))}
    print(
        f"| small CNN, Fashion-MNIST ({train_n} train, {steps}-step finetune) | "
        f"{len(keys)} entries | fisher {times['fisher']:.1f} s, exact {times['exact']:.1f} s, "
        f"finetune {t_ft:.0f} s | Spearman rho: fisher~exact "
        f"{_spearman(ranked['fisher'], ranked['exact']):.3f}, fisher~finetune "
        f"{_spearman(ranked['fisher'], ranked['ft']):.3f}, exact~finetune "
        f"{_spearman(ranked['exact'], ranked['ft']):.3f} |"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--every", type=int, default=1)
    p.add_argument("--images", type=int, default=256)
    p.add_argument(
        "--sample-images",
        type=lambda v: [int(k) for k in v.split(",")],
        help="A,B: measure at A and B images and extrapolate linearly to --images",
    )
    p.add_argument("--train", type=int, default=10000)
    p.add_argument("--steps", type=int, default=80)
    p.add_argument(
        "--latency",
        help="MobileNetV2 224x224 latency table (JSON, e.g. from `depthfx table latency`): "
        "score the deployed merge groups",
    )
    p.add_argument("--skip-mbv2", action="store_true")
    p.add_argument("--skip-finetune", action="store_true")
    p.add_argument("--estimate", choices=("fisher", "exact"), default="fisher")
    args = p.parse_args()
    if not args.skip_mbv2:
        latency = None if args.latency is None else LatencyTable.read_json(args.latency)
        mbv2_proxy(
            args.threads, args.every, args.images, args.estimate, args.sample_images, latency
        )
    if not args.skip_finetune:
        proxy_vs_finetune(args.threads, args.train, args.steps)


if __name__ == "__main__":
    main()
