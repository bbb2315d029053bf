"""The ``depthfx`` command. Each subcommand lives in ``depthfx/commands/<name>.py`` and exposes
``register(subparsers)``; heavy imports happen inside the command, so ``--help`` is instant."""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Sequence
from typing import TextIO

from depthfx.errors import DepthFXError

#: Subcommands in the order ``depthfx --help`` lists them.
COMMANDS: tuple[str, ...] = ("compile", "inspect", "table", "solve", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="depthfx",
        description=(
            "Exact, latency-aware depth compression of CNNs: find conv chains, measure "
            "latency/importance tables, solve the two-stage DP, merge, export ONNX."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"depthfx.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; a ``DepthFXError`` becomes one line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return int(args.func(args) or 0)
        except DepthFXError as err:
            print(f"depthfx: error: {err}", file=sys.stderr)
            return 2


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """A warning as one line, like errors: on the command line the Python source line a
    warning was raised from says nothing to the user."""
    print(f"depthfx: warning: {message}", file=file or sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
