"""``depthfx table KIND``: measure a latency or importance table for a model.

Each kind lives in ``depthfx/commands/table_<kind>.py`` and exposes ``register(subparsers)``.
"""

from __future__ import annotations

import argparse
import importlib

KINDS: tuple[str, ...] = ("latency", "importance")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "table",
        help="measure a latency or importance table for a model",
        description=(
            "Measure the tables the DP solves over: per valid block the latency of its merged "
            "conv on a real backend (latency), or per extended block the accuracy cost of "
            "merging it (importance). Tables are cached, resumable and fingerprinted."
        ),
    )
    kinds = parser.add_subparsers(dest="table_kind", metavar="KIND", required=True)
    for name in KINDS:
        importlib.import_module(f"depthfx.commands.table_{name}").register(kinds)
