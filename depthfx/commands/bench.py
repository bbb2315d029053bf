"""``depthfx bench``: median/IQR latency of one model on one backend, with its fingerprint."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from depthfx.commands._common import parse_shape
from depthfx.errors import DepthFXError
from depthfx.io import write_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="measure a model's latency (median, IQR, fingerprint)",
        description=(
            "Time MODEL (an .onnx file or a spec such as torchvision:resnet18) on one backend. "
            "Reports the median per-call latency over blocks and the IQR; use --threads 1 "
            "for numbers that are stable on a shared CPU."
        ),
    )
    p.add_argument("model", metavar="MODEL_OR_ONNX", help="an .onnx path or torchvision:NAME")
    p.add_argument("--backend", choices=("onnxruntime", "torch", "tensorrt"), default="onnxruntime")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: 1)")
    p.add_argument(
        "--input-shape",
        default=None,
        help="N,C,H,W of the input (default 1,3,224,224 for specs; the graph's for .onnx)",
    )
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: stable)")
    p.add_argument("--warmup", type=float, default=0.2, help="warm-up seconds (default 0.2)")
    p.add_argument("--blocks", type=int, default=20, help="timed blocks (default 20)")
    p.add_argument("--json", type=Path, default=None, help="also write the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from depthfx.benchmark import benchmark
    from depthfx.models import load_model

    shape = parse_shape(args.input_shape, args.batch) if args.input_shape else None
    backend_options: dict[str, Any] = {}
    if args.model.endswith(".onnx"):
        if not Path(args.model).is_file():
            raise DepthFXError(f"ONNX file not found: {args.model}")
        model: Any = args.model
        example = (torch.randn(shape),) if shape else None
        if example is None and args.backend in ("onnxruntime", "tensorrt"):
            backend_options["batch"] = args.batch or 1
        if args.backend == "torch":
            raise DepthFXError("the torch backend needs a PyTorch model, not an .onnx file")
    else:
        model = load_model(args.model).eval()
        example = (torch.randn(parse_shape(args.input_shape, args.batch)),)
    result = benchmark(
        model,
        example,
        backend=args.backend,
        device=args.device,
        threads=args.threads,
        warmup_s=args.warmup,
        blocks=args.blocks,
        backend_options=backend_options,
    )
    t = result.timing
    rows = [
        ("model", args.model),
        ("median", f"{t.median_ms:.4f} ms"),
        ("IQR", f"{t.iqr_ms:.4f} ms ({100 * t.spread:.1f}% of median)"),
        ("blocks", f"{len(t.samples_ms)} × {t.n_per_block} calls"),
        ("warm-up", f"{t.warmup_s:.2f} s, {t.warmup_calls} calls"),
        ("setting", result.fingerprint.summary()),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    if args.json is not None:
        write_json(args.json, {"model": args.model, **result.to_dict()})
    return 0
