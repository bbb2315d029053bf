"""Per-entry importance experiments run by ``measure_importance`` on a prepared network.

``finetune_experiment`` is the paper's protocol (spec §3.2): re-initialise a single-layer block
(conv #end and its BN, ``reset_layers``), fine-tune with :func:`depthfx.finetune`, record the
changes of held-out loss/top-1 (and, on request, of the training-set loss/top-1, which the
paper evaluates too) with respect to the base network, in percentage points for accuracies.
``callable_experiment`` wraps a user score ``f(prepared) -> float``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from depthfx.finetune import evaluate, finetune
from depthfx.measure.importance import PAPER_COLUMNS
from depthfx.records import Chain
from depthfx.solver import ImportanceKey


@dataclass
class Experiment:
    """``base(prepared) -> dict`` once; ``run(prepared, chain, key, base) -> metrics`` per
    entry, in the order of ``columns``; ``settings`` identify the results in a cache."""

    name: str
    columns: tuple[str, ...]
    score: str
    base: Callable[[fx.GraphModule], dict[str, Any]]
    run: Callable[[fx.GraphModule, Chain, ImportanceKey, dict[str, Any]], list[float]]
    settings: dict[str, Any] = field(default_factory=dict)


def reinit_conv(prepared: fx.GraphModule, chain: Chain, p: int) -> None:
    """Reset conv p of ``chain`` and its BN, as the original's ``reset_layers``."""
    conv = chain.conv(p)
    prepared.get_submodule(conv.module).reset_parameters()
    if conv.bn_kind in ("module", "norm_act") and conv.bn is not None:
        prepared.get_submodule(conv.bn).reset_parameters()
    elif conv.bn_kind == "function" and conv.bn_attrs is not None:
        mean, var, weight, bias = conv.bn_attrs
        with torch.no_grad():
            for name, value in ((mean, 0.0), (var, 1.0), (weight, 1.0), (bias, 0.0)):
                if name is not None:
                    _get_attr(prepared, name).fill_(value)


def _get_attr(module: nn.Module, target: str) -> torch.Tensor:
    owner, _, leaf = target.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, leaf)


def finetune_experiment(
    train_data: Any,
    val_data: Any,
    *,
    epochs: float,
    steps: int | None,
    lr: float,
    batch_size: int,
    train_metrics: bool,
    seed: int,
    progress: bool,
) -> Experiment:
    def scores(net: nn.Module) -> dict[str, float]:
        val_loss, val_acc = evaluate(net, val_data, batch_size)
        train_loss, train_acc = (
            evaluate(net, train_data, batch_size) if train_metrics else (float("nan"),) * 2
        )
        return {"train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
                "val_acc": val_acc}  # fmt: skip

    def run(
        net: fx.GraphModule, chain: Chain, key: ImportanceKey, base: dict[str, Any]
    ) -> list[float]:
        _, st, end, _, _ = key
        if end == st + 1:
            reinit_conv(net, chain, end)
        finetune(
            net, train_data, epochs=epochs, steps=steps, lr=lr, batch_size=batch_size,
            seed=seed, progress=progress,
        )  # fmt: skip
        after = scores(net)
        return [after[c] - base[c] for c in PAPER_COLUMNS]

    settings = {
        "method": "finetune",
        "epochs": epochs,
        "steps": steps,
        "lr": lr,
        "batch_size": batch_size,
        "train_metrics": train_metrics,
        "seed": seed,
        "optimizer": "sgd nesterov momentum 0.9 wd 1e-5, cosine per iteration",
    }
    return Experiment("finetune", PAPER_COLUMNS, "val_acc", scores, run, settings)


def callable_experiment(fn: Callable[[fx.GraphModule], float]) -> Experiment:
    """Score = fn(entry's prepared network), as returned."""

    def base(net: fx.GraphModule) -> dict[str, Any]:
        return {}

    def run(
        net: fx.GraphModule, chain: Chain, key: ImportanceKey, ref: dict[str, Any]
    ) -> list[float]:
        return [float(fn(net))]

    name = getattr(fn, "__qualname__", type(fn).__name__)
    settings = {"method": "callable", "function": f"{getattr(fn, '__module__', '')}.{name}"}
    return Experiment("callable", ("score",), "score", base, run, settings)


__all__ = ["Experiment", "callable_experiment", "finetune_experiment", "reinit_conv"]
