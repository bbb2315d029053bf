"""analyze: capture a model and find its conv chains (the :class:`~depthfx.records.Analysis`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from depthfx.passes.capture import capture
from depthfx.passes.find_chains import find_chains
from depthfx.records import Analysis, Strided


def analyze(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    strided: Strided = "general",
    exclude: Sequence[str] = (),
    min_convs: int = 1,
    training: bool | None = None,
) -> Analysis:
    """Capture ``model`` and find its conv chains.

    ``strided="general"``: strided convs merge like any other (the merge composes them
    exactly); ``"paper"``: the original's rule, a break right after every strided conv.
    ``exclude``: conv module or node names kept out of every chain (barriers), e.g.
    ``("features.0.0", "features.18.0")`` gives the paper's 50-conv MobileNetV2 chain.
    Chains with fewer than ``min_convs`` convs are dropped.
    """
    if strided not in ("general", "paper"):
        raise ValueError(f"strided must be 'general' or 'paper', not {strided!r}")
    gm = capture(model, example_inputs, training=training)
    chains = find_chains(gm, strided=strided, exclude=exclude, min_convs=min_convs)
    inputs = [example_inputs] if isinstance(example_inputs, torch.Tensor) else example_inputs
    return Analysis(
        graph_module=gm,
        chains=chains,
        example_shapes=[tuple(x.shape) for x in inputs],
        options={
            "strided": strided,
            "exclude": tuple(exclude),
            "min_convs": min_convs,
            "training": gm.meta["depthfx_training"],
        },
    )
