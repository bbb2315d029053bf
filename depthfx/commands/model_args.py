"""Arguments and helpers shared by the subcommands that take a model spec."""

from __future__ import annotations

import argparse
from typing import Any

from depthfx.errors import DepthFXError

DEFAULT_INPUT_SHAPE = "1,3,224,224"
MODEL_HELP = (
    "torchvision:NAME, timm:NAME or path/to/file.py:factory (random weights unless --weights)"
)


def add_model_arguments(parser: argparse.ArgumentParser, *, model_help: str = MODEL_HELP) -> None:
    """MODEL, --weights and --input-shape, spelled the same in every subcommand."""
    parser.add_argument("model", metavar="MODEL", help=model_help)
    parser.add_argument("--weights", help="local state_dict file to load (nothing is downloaded)")
    parser.add_argument(
        "--input-shape",
        default=None,
        metavar="N,C,H,W",
        help=f"example input shape (default: {DEFAULT_INPUT_SHAPE})",
    )


def parse_shape(text: str | None, batch: int | None = None) -> tuple[int, ...]:
    """A comma-separated shape (default 1,3,224,224), with ``batch`` substituted for N."""
    try:
        shape = tuple(int(v) for v in (text or DEFAULT_INPUT_SHAPE).split(","))
    except ValueError:
        shape = ()
    if len(shape) < 2 or any(v <= 0 for v in shape):
        raise DepthFXError(
            f"bad --input-shape {text!r}: expected positive integers N,C,… like "
            f"{DEFAULT_INPUT_SHAPE}"
        )
    return (batch, *shape[1:]) if batch else shape


def load_model_and_input(args: argparse.Namespace, batch: int | None = None) -> tuple[Any, Any]:
    """The model named by ``args.model`` (eval mode) and a seeded random example input."""
    import torch

    from depthfx.models import load_model

    model = load_model(args.model, args.weights).eval()
    shape = parse_shape(args.input_shape, batch)
    return model, torch.randn(shape, generator=torch.Generator().manual_seed(0))


#: The budget word that asks for the fastest configuration the tables allow.
FASTEST = "fastest"


def budget_value(text: str) -> float | str:
    """A ``--budget`` value: a positive fraction of the original's latency, or ``fastest``."""
    if text.strip().lower() == FASTEST:
        return FASTEST
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(
            f"bad budget {text!r}: expected a positive fraction like 0.7, or {FASTEST}"
        )
    return value
