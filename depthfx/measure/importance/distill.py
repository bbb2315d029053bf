"""The ``distill`` importance method: a short distillation fine-tune per entry, then the entry's
divergence from the original network.

Why: the proxies score an entry's network as it is right after ``prepare``, but a plan's
network is fine-tuned before it is used, and what fine-tuning repairs first (BN statistics, a
per-channel rescaling the removed activation used to do) the proxies count as damage. A few
hundred steps of distillation from the original repair that part, so what remains is closer to
what the paper's per-entry fine-tune (spec §3.2) measures, at a fraction of its cost: no labels,
no re-initialisation, a few hundred small-batch steps instead of an epoch.

How: per entry a prepared copy (``run_experiments``: cached per entry, sharded, resumable),
fine-tuned with :func:`depthfx.finetune` on the original's soft labels only (``alpha_kd=1``;
SGD, Nesterov, cosine per iteration) for ``steps`` (default :data:`DISTILL_STEPS`) on
``train_data`` (default ``data``), then scored on ``val_data`` (default ``data``; give held-out
images) by −KL(softmax(original) ‖ softmax(entry)), and by the change of top-1 in percentage
points when the data has labels. Unchanged entries stay close to 0, as with the proxy, so the
table needs no normalisation (``norm="none"``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from depthfx.errors import DepthFXError
from depthfx.finetune import as_loader, finetune
from depthfx.measure.importance.experiments import Experiment, run_experiments
from depthfx.measure.importance.methods import (
    ImportanceRequest,
    ImportanceResult,
    register_importance_method,
)
from depthfx.records import Chain
from depthfx.solver import ImportanceKey

#: Distillation steps per entry (batches of :data:`DISTILL_BATCH`).
DISTILL_STEPS = 200
DISTILL_BATCH = 64
#: Columns of the raw table: −KL after distillation, Δ top-1 (pp; NaN without labels).
DISTILL_COLUMNS = ("neg_kl", "val_acc")


@register_importance_method("distill", norm="none", alpha=1.0)
def distill_importance(request: ImportanceRequest) -> ImportanceResult:
    """Distil every entry's network from the original, score it on held-out data."""
    r = request
    train_data = r.data if r.train_data is None else r.train_data
    val_data = r.data if r.val_data is None else r.val_data
    if train_data is None or val_data is None:
        raise DepthFXError(
            "method='distill' needs data (or train_data to distil on and val_data to score on)"
        )
    experiment = distill_experiment(
        r.model, with_labels(train_data), with_labels(val_data), steps=r.steps or DISTILL_STEPS,
        lr=r.lr, batch_size=r.batch_size or DISTILL_BATCH, seed=r.seed,
        labels=not isinstance(val_data, torch.Tensor),
    )  # fmt: skip
    result = run_experiments(
        r.model, r.analysis, r.keys, experiment, r.merges, r.merge_id, cache=r.cache,
        progress=r.progress,
    )  # fmt: skip
    if r.score in ("accuracy", "val_acc"):
        scores = {k: m[result.columns.index("val_acc")] for k, m in result.metrics.items()}
        columns = ["val_acc", "neg_kl"]
        metrics = {k: [m[1], m[0]] for k, m in result.metrics.items()}
        return ImportanceResult(scores, columns, metrics, result.meta)
    return result


def with_labels(data: Any) -> Any:
    """A tensor of inputs as (inputs, zeros): the fine-tune loop reads pairs, and with
    ``alpha_kd=1`` the labels have weight 0."""
    if isinstance(data, torch.Tensor):
        return data, torch.zeros(len(data), dtype=torch.long)
    return data


def distill_experiment(
    teacher: nn.Module,
    train_data: Any,
    val_data: Any,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    labels: bool,
) -> Experiment:
    """The per-entry distillation fine-tune and its scores (module docstring); ``labels``:
    whether ``val_data``'s labels are real (else Δ top-1 is NaN)."""
    teacher = teacher.eval()
    refs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def references() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        if not refs:
            with torch.no_grad():
                for x, y in as_loader(val_data, 256, shuffle=False):
                    refs.append((x, torch.as_tensor(y), F.log_softmax(teacher(x), dim=1)))
        return refs

    def scores(net: nn.Module) -> dict[str, float]:
        net.eval()
        kl, correct, n = 0.0, 0, 0
        with torch.no_grad():
            for x, y, log_p in references():
                log_q = F.log_softmax(net(x), dim=1)
                kl += float((log_p.exp() * (log_p - log_q)).sum())
                correct += int((log_q.argmax(1) == y).sum())
                n += len(x)
        acc = 100.0 * correct / n if labels else float("nan")
        return {"neg_kl": -kl / n + 0.0, "val_acc": acc}

    def run(
        net: fx.GraphModule, chain: Chain, key: ImportanceKey, base: dict[str, Any]
    ) -> list[float]:
        finetune(
            net, train_data, steps=steps, lr=lr, batch_size=batch_size, distill_from=teacher,
            alpha_kd=1.0, seed=seed, progress=False,
        )  # fmt: skip
        after = scores(net)
        return [after["neg_kl"], after["val_acc"] - base["val_acc"]]

    settings = {
        "method": "distill",
        "steps": steps,
        "lr": lr,
        "batch_size": batch_size,
        "seed": seed,
        "optimizer": "sgd nesterov momentum 0.9 wd 1e-5, cosine per iteration, soft labels only",
    }
    return Experiment("distill", DISTILL_COLUMNS, "neg_kl", scores, run, settings)


__all__ = ["DISTILL_BATCH", "DISTILL_COLUMNS", "DISTILL_STEPS", "distill_experiment",
           "distill_importance", "with_labels"]  # fmt: skip
