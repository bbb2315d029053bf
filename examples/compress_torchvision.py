"""Example 1: compress a torchvision CNN end to end and export it to ONNX.

    python examples/compress_torchvision.py --model mobilenet_v2 --budget 0.7 --size 224

Measures a latency table on ONNX Runtime (CPU), a proxy importance table, solves the DP,
merges exactly and exports ONNX; then times the original and the compressed model side by
side on the same backend. The model has random weights here: load your own checkpoint with
``model.load_state_dict(...)``. Without fine-tuning the accuracy drops (activations are gone);
see examples/finetune_fashion_mnist.py for the staged API that fine-tunes before merging.
"""

from __future__ import annotations

import argparse
import warnings

import torch
import torchvision

import depthfx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v2", help="a torchvision model name")
    parser.add_argument("--budget", type=float, default=0.7, help="fraction of the latency")
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--output", default="compressed.onnx")
    args = parser.parse_args()

    model = torchvision.models.get_model(args.model, weights=None).eval()
    x = torch.randn(1, 3, args.size, args.size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fine-tuning reminder and the random-data proxy
        fast = depthfx.compile(model, budget=args.budget, example_inputs=x)
    report = fast.depthfx_report
    print(f"convs {report.convs_before} -> {report.convs_after}")
    print(f"max |merged - prepared| = {report.max_abs_error:.1e}")

    depthfx.export_onnx(fast, args.output, (x,))
    timing = depthfx.compare(model, fast, (x,))
    print(
        f"ONNX Runtime CPU: original {timing.a.median_ms:.2f} ms, compressed "
        f"{timing.b.median_ms:.2f} ms (predicted {fast.depthfx_plan.predicted_ms:.2f} ms), "
        f"speed-up {timing.speedup:.2f}x; wrote {args.output}"
    )


if __name__ == "__main__":
    main()
