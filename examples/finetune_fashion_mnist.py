"""Example 2: the staged API with fine-tuning on real data (Fashion-MNIST).

    python examples/finetune_fashion_mnist.py                       # a few minutes on 1 core
    python examples/finetune_fashion_mnist.py --train 2000 --test 500 --width 8 --blocks 1

Trains a small MobileNetV2-style CNN (three chains of inverted residual blocks, split by max
pooling) on Fashion-MNIST, then compresses it with the staged API:

    depthfx.plan      latency table on ONNX Runtime (CPU) + proxy importance on real images
    depthfx.prepare   activations the plan drops become identity, padding moves: trainable
    depthfx.finetune  the paper's recipe, distilling from the original network
    depthfx.convert   each merge group becomes one conv (exact, verified)
    depthfx.export_onnx, depthfx.compare

and prints the top-1 before compression, after compression without fine-tuning, and after
fine-tuning, with the measured speed-up (original and compressed timed interleaved on the same
backend). The data come from the Debian package dataset-fashion-mnist; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

import depthfx
from depthfx.data import load_dataset
from depthfx.finetune import as_loader, evaluate
from depthfx.passes.convert import count_convs
from depthfx.testing import InvertedResidual


def conv_bn_relu(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


def small_cnn(width: int = 16, blocks: int = 2, classes: int = 10) -> nn.Sequential:
    """Three chains (28×28, 14×14, 7×7) of a conv and ``blocks`` inverted residuals each."""
    layers: list[nn.Module] = []
    cin = 1
    for stage, cout in enumerate((width, 2 * width, 4 * width)):
        if stage:
            layers.append(nn.MaxPool2d(2))  # ends a chain
        layers.append(conv_bn_relu(cin, cout, 3 if stage == 0 else 1))
        layers += [InvertedResidual(cout) for _ in range(blocks)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers)


def train(model: nn.Module, data: Any, epochs: int, lr: float, batch_size: int) -> None:
    """A plain training loop for the original network (any loop works; depthfx is not
    involved until the model is trained)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * len(as_loader(data, batch_size, shuffle=False))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for epoch in range(epochs):
        for x, y in as_loader(data, batch_size, shuffle=True, epoch=epoch):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


def onnx_top1(path: Path, data: Any) -> tuple[float, torch.Tensor]:
    """Top-1 of the ONNX file on ONNX Runtime (CPU), and its logits for the first batch."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    correct, n, first = 0, 0, None
    for x, y in as_loader(data, 256, shuffle=False):
        (logits,) = session.run(None, {name: x.numpy()})
        first = torch.from_numpy(logits) if first is None else first
        correct += int((np.argmax(logits, 1) == y.numpy()).sum())
        n += len(y)
    return 100.0 * correct / n, first


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole example; returns its numbers (and the modules) for tests."""
    torch.manual_seed(args.seed)
    # One thread by default: for a network this small more threads mostly spin-wait, and on a
    # shared 2-core machine 2 threads train ~15× slower than 1.
    torch.set_num_threads(args.threads)
    train_data = load_dataset(f"fashion-mnist[:{args.train}]")
    test_data = load_dataset(f"fashion-mnist-test[:{args.test}]")
    calib = load_dataset(f"fashion-mnist[{args.train}:{args.train + args.calib}]")
    x = test_data.tensors[0][:1]  # example input: 1×1×28×28

    t0 = time.perf_counter()
    model = small_cnn(args.width, args.blocks)
    train(model, train_data, args.epochs, args.lr, args.batch_size)
    acc_original = evaluate(model, test_data)[1]
    print(f"trained the original in {time.perf_counter() - t0:.0f} s: top-1 {acc_original:.2f}%")

    # 1. Plan: latency table on ORT CPU (cached), proxy importance on held-out training images.
    t0 = time.perf_counter()
    plan = depthfx.plan(
        model,
        (x,),
        budget=args.budget,
        data=calib,
        latency_options={"threads": args.threads, "cache_dir": args.cache},
        importance_options={"images": args.calib},
    )
    print(
        f"planned in {time.perf_counter() - t0:.0f} s: budget {plan.budget_ms:.3f} ms, "
        f"predicted {plan.predicted_ms:.3f} ms"
    )
    # 2. Prepare: a trainable network that computes what the merged one will.
    prepared = depthfx.prepare(model, plan, (x,))
    acc_no_finetune = evaluate(depthfx.convert(prepared, plan, (x,)), test_data)[1]
    # 3. Fine-tune with the paper's recipe, distilling from the original.
    t0 = time.perf_counter()
    depthfx.finetune(
        prepared, train_data, epochs=args.finetune_epochs, lr=args.finetune_lr,
        batch_size=args.batch_size, distill_from=model, checkpoint=args.checkpoint,
    )  # fmt: skip
    finetune_s = time.perf_counter() - t0
    # 4. Convert: one conv per merge group, verified against the fine-tuned prepared network.
    fast = depthfx.convert(prepared, plan, (x,))
    acc_finetuned = evaluate(fast, test_data)[1]
    # 5. Export (checked against torch) and measure both models interleaved on the backend.
    depthfx.export_onnx(fast, args.output, (x,))
    acc_onnx, onnx_logits = onnx_top1(args.output, test_data)
    with torch.no_grad():
        torch_logits = fast(test_data.tensors[0][: len(onnx_logits)])
    onnx_max_error = float((onnx_logits - torch_logits).abs().max())
    timing = depthfx.compare(model, fast, (x,), threads=args.threads)

    result = {
        "convs_before": count_convs(model),
        "convs_after": count_convs(fast),
        "top1_original": acc_original,
        "top1_no_finetune": acc_no_finetune,
        "top1_finetuned": acc_finetuned,
        "top1_onnx": acc_onnx,
        "onnx_max_abs_error": onnx_max_error,
        "finetune_s": finetune_s,
        "baseline_ms": timing.a.median_ms,
        "predicted_ms": plan.predicted_ms,
        "measured_ms": timing.b.median_ms,
        "speedup": timing.speedup,
        "onnx": str(args.output),
        "plan": plan,
        "original": model,
        "merged": fast,
    }
    rows = [
        ("original", acc_original),
        ("compressed, without fine-tuning", acc_no_finetune),
        (f"compressed, fine-tuned ({args.finetune_epochs:g} epochs, {finetune_s:.0f} s)",
         acc_finetuned),
        (f"the same on ONNX Runtime ({args.output})", acc_onnx),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    print(f"\nconvs: {result['convs_before']} -> {result['convs_after']}")
    print(f"top-1 on {len(test_data)} Fashion-MNIST test images:")
    for name, acc in rows:
        print(f"  {name:<{width}}  {acc:6.2f}%")
    print(f"  max |ONNX - torch| on the first batch: {onnx_max_error:.1e}")
    print(
        f"latency on ONNX Runtime CPU, batch 1, {args.threads} thread(s), interleaved: original "
        f"{timing.a.median_ms:.3f} ms, compressed {timing.b.median_ms:.3f} ms (predicted "
        f"{plan.predicted_ms:.3f} ms): speed-up {timing.speedup:.2f}x"
    )
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=8000, help="training images (default 8000)")
    p.add_argument("--test", type=int, default=10000, help="test images (default 10000)")
    p.add_argument("--calib", type=int, default=256, help="proxy calibration images")
    p.add_argument("--epochs", type=int, default=3, help="training epochs of the original")
    p.add_argument("--lr", type=float, default=3e-3, help="AdamW peak lr for the original")
    p.add_argument("--finetune-epochs", type=float, default=1, help="fine-tuning epochs")
    p.add_argument("--finetune-lr", type=float, default=0.05, help="SGD lr for fine-tuning")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--width", type=int, default=16, help="channels of the first stage")
    p.add_argument("--blocks", type=int, default=2, help="inverted residuals per stage")
    p.add_argument("--budget", type=float, default=0.7, help="fraction of the latency")
    p.add_argument(
        "--threads", type=int, default=1, help="threads for torch and ONNX Runtime (default 1)"
    )
    p.add_argument("--cache", type=Path, default=None, help="latency table cache folder")
    p.add_argument("--checkpoint", type=Path, default=None, help="resumable fine-tuning state")
    p.add_argument("--output", type=Path, default=Path("fashion_mnist_compressed.onnx"))
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
    try:
        run(args)
    except depthfx.DepthFXError as err:  # e.g. the data set is not installed
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
