"""``depthfx inspect MODEL``: print the conv chains of a model, optionally as JSON."""

from __future__ import annotations

import argparse
from typing import Any

from depthfx.commands.model_args import add_model_arguments, load_model_and_input
from depthfx.io import write_json


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="find the conv chains of a model (positions, activations, residuals, blocks)",
        description="Capture a model with torch.fx and print its conv chains.",
    )
    add_model_arguments(p)
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


def run(args: argparse.Namespace) -> int:
    from depthfx.passes.analyze import analyze

    model, example = load_model_and_input(args)
    analysis = analyze(
        model,
        example,
        strided=args.strided,
        exclude=args.exclude,
        min_convs=args.min_convs,
        training=args.train,
    )
    print(analysis)
    if args.json:
        write_json(args.json, {"model": args.model, **analysis.to_json()})
    return 0
