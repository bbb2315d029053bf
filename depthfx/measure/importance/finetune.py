"""The ``finetune`` importance method: the paper's experiment (spec §3.2).

Per entry a prepared copy, its single-layer block re-initialised (conv #end and its BN,
``reset_layers``: :func:`reinit_conv`), fine-tuned with :func:`depthfx.finetune` (SGD,
Nesterov, cosine per iteration), scored by the changes of held-out loss/top-1 (and, on request,
of the training-set loss/top-1, which the paper evaluates too) with respect to the base network,
in percentage points for accuracies; the table's score is the change of held-out top-1. Cached
and sharded by :func:`~depthfx.measure.importance.experiments.run_experiments`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import fx, nn

from depthfx.errors import DepthFXError
from depthfx.finetune import evaluate, finetune
from depthfx.measure.importance.experiments import Experiment, run_experiments
from depthfx.measure.importance.methods import (
    ImportanceRequest,
    ImportanceResult,
    register_importance_method,
)
from depthfx.records import Chain
from depthfx.solver import ImportanceKey

#: Raw ``importance.csv`` metric columns of the paper (spec §3.2).
PAPER_COLUMNS = ("train_loss", "train_acc", "val_loss", "val_acc")


@register_importance_method("finetune", norm="single", alpha=1.6, per_entry=True)
def finetune_importance(request: ImportanceRequest) -> ImportanceResult:
    """Fine-tune every entry's network on ``train_data``, score it on ``val_data`` (default
    ``data``). The defaults ``single``/1.6 are the paper's MBV2-1.0 setting (spec §7.17)."""
    r = request
    val_data = r.data if r.val_data is None else r.val_data
    if r.train_data is None or val_data is None:
        raise DepthFXError(
            "method='finetune' needs train_data (to fine-tune on) and val_data or data "
            "(held-out, to score on)"
        )
    experiment = finetune_experiment(
        r.train_data, val_data, epochs=r.epochs, steps=r.steps, lr=r.lr,
        batch_size=r.batch_size or 256, train_metrics=r.train_metrics, seed=r.seed,
        progress=r.progress and r.executor == "serial",  # no per-entry bars from workers
    )  # fmt: skip
    return run_experiments(
        r.model, r.analysis, r.keys, experiment, r.merges, r.merge_id, cache=r.cache,
        progress=r.progress, executor=r.executor, executor_options=r.executor_options,
    )  # fmt: skip


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
    """The experiment of the method; built from module-level functions bound with
    ``functools.partial`` so that it pickles (executor ``processes`` sends it to workers)."""
    scores = partial(
        _scores, train_data=train_data, val_data=val_data, batch_size=batch_size,
        train_metrics=train_metrics,
    )  # fmt: skip
    run = partial(
        _run, train_data=train_data, scores=scores, epochs=epochs, steps=steps, lr=lr,
        batch_size=batch_size, seed=seed, progress=progress,
    )  # fmt: skip
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


def _scores(
    net: nn.Module, *, train_data: Any, val_data: Any, batch_size: int, train_metrics: bool
) -> dict[str, float]:
    val_loss, val_acc = evaluate(net, val_data, batch_size)
    train_loss, train_acc = (
        evaluate(net, train_data, batch_size) if train_metrics else (float("nan"),) * 2
    )
    return {"train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
            "val_acc": val_acc}  # fmt: skip


def _run(
    net: fx.GraphModule,
    chain: Chain,
    key: ImportanceKey,
    base: dict[str, Any],
    *,
    train_data: Any,
    scores: Callable[[nn.Module], dict[str, float]],
    epochs: float,
    steps: int | None,
    lr: float,
    batch_size: int,
    seed: int,
    progress: bool,
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


__all__ = ["PAPER_COLUMNS", "finetune_experiment", "finetune_importance", "reinit_conv"]
