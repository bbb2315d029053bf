"""``depthfx inspect MODEL``: print the conv chains of a model, optionally as JSON."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from depthfx.errors import DepthFXError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="find the conv chains of a model (positions, activations, residuals, blocks)",
        description="Capture a model with torch.fx and print its conv chains.",
    )
    p.add_argument("model", help="torchvision:NAME, timm:NAME or path/to/file.py:factory")
    p.add_argument("--weights", help="local state_dict file to load (nothing is downloaded)")
    p.add_argument(
        "--input-shape",
        default="1,3,224,224",
        help="example input shape, comma separated (default: 1,3,224,224)",
    )
    p.add_argument(
        "--strided",
        choices=("general", "paper"),
        default="general",
        help="'paper': a break after every strided conv, as the original code",
    )
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="CONV",
        help="conv module or node name to keep out of every chain (repeatable)",
    )
    p.add_argument("--min-convs", type=int, default=1, help="drop shorter chains")
    p.add_argument("--train", action="store_true", help="trace in training mode")
    p.add_argument("--json", metavar="PATH", help="also write the analysis as JSON")
    p.set_defaults(func=run)


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(v <= 0 for v in shape):
        raise DepthFXError(
            f"bad --input-shape {text!r}: expected positive integers like 1,3,224,224"
        )
    return shape


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically: a failed run never leaves a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run(args: argparse.Namespace) -> int:
    import torch

    from depthfx.analysis import analyze
    from depthfx.models import load_model

    shape = parse_shape(args.input_shape)
    model = load_model(args.model, args.weights)
    analysis = analyze(
        model,
        torch.randn(shape),
        strided=args.strided,
        exclude=args.exclude,
        min_convs=args.min_convs,
        training=args.train,
    )
    print(analysis)
    if args.json:
        write_json(Path(args.json), {"model": args.model, **analysis.to_json()})
    return 0
