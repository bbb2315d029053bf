"""``depthfx bench``: median/IQR latency of one model on one backend, with its fingerprint."""

from __future__ import annotations

import argparse
import importlib
import json
import os
from pathlib import Path
from typing import Any

from depthfx.errors import DepthFXError


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


def _shape(text: str | None, batch: int | None) -> tuple[int, ...] | None:
    """The --input-shape with --batch substituted for N (None if no shape was given)."""
    if text is None:
        return None
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise DepthFXError(f"--input-shape must be comma-separated ints, got {text!r}") from None
    return (batch, *shape[1:]) if batch else shape


def load_model(spec: str) -> Any:
    """An ``nn.Module`` for a model spec: ``depthfx.models.load_model`` when available,
    otherwise ``torchvision:NAME`` with random weights (eval mode)."""
    try:
        models = importlib.import_module("depthfx.models")
    except ModuleNotFoundError:
        models = None
    if models is not None and hasattr(models, "load_model"):
        return models.load_model(spec)
    source, _, name = spec.partition(":")
    if source != "torchvision" or not name:
        raise DepthFXError(f"model must be an .onnx file or torchvision:NAME, got {spec!r}")
    import torchvision

    try:
        return torchvision.models.get_model(name, weights=None).eval()
    except ValueError as err:
        raise DepthFXError(f"unknown torchvision model {name!r}") from err


def run(args: argparse.Namespace) -> int:
    import torch

    from depthfx.benchmark import benchmark

    shape = _shape(args.input_shape, args.batch)
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
        model = load_model(args.model)
        example = (torch.randn(shape or (args.batch or 1, 3, 224, 224)),)
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
        out = {"model": args.model, **result.to_dict()}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_name(f".{args.json.name}.tmp")
        tmp.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, args.json)
    return 0
