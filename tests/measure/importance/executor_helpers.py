"""Scores for the executor tests, importable by worker processes (this folder is on the
driver's sys.path, which spawned workers and the local Ray cluster inherit): a plain score,
one that counts its calls across processes, one whose first call kills its worker, one that
always fails on one entry."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import torch
from torch import fx, nn

from depthfx.plans import Plan


def relus(gm: fx.GraphModule) -> float:
    """The number of ReLU call sites of a prepared network."""
    return float(
        sum(
            n.target is torch.relu
            or (n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.ReLU))
            for n in gm.graph.nodes
        )
    )


class CountCalls:
    """``relus``, leaving one file per call in ``folder`` (a count across processes)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __call__(self, gm: fx.GraphModule) -> float:
        (self.folder / uuid.uuid4().hex).touch()
        return relus(gm)


class DieOnce:
    """``relus``; the first call of a run (whichever entry it is) ends its worker process
    abruptly, as a crash would: ``marker`` is created atomically, once."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __call__(self, gm: fx.GraphModule) -> float:
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return relus(gm)
        os._exit(1)


class FailOn:
    """``relus``, but raises on the network prepared for ``plan`` (one entry's)."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    def __call__(self, gm: fx.GraphModule) -> float:
        if gm.depthfx_prepared.plan == self.plan:
            raise RuntimeError("injected failure")
        return relus(gm)
