"""The proxy with BN re-estimation (``bn_recalibration=True``): every entry's network gets its
BatchNorm statistics re-estimated on the proxy's data before it is compared with the base.

Why: removing activations shifts the statistics the BN layers inside and after a block see;
fine-tuning repairs that shift first, so a score taken before it over-penalises blocks whose
damage is mostly a BN shift (EagleEye). Re-estimating BN (:func:`~depthfx.measure.
bn_recalibration.recalibrate_bn`) removes that part, so the proxy ranks entries more like their
accuracy after fine-tuning (``benchmarks/accuracy.py`` measures by how much).

How: the base network is re-estimated on the same batches as each entry's network, so an
entry that changes nothing still scores exactly 0 and the score reflects the block, not the
sample's noise. Each entry's network is a private copy of the eval capture (BN buffers are
written), run whole on the proxy's batches; the scores are those of the exact proxy (−KL,
−relative MSE, Δ top-1 with labels). BN cannot be folded beforehand, so this is slower than the
Fisher proxy: about two full forward passes per entry and batch.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
from torch import fx

from depthfx.measure.bn_recalibration import recalibrate_bn
from depthfx.measure.importance.divergence import (
    DivergenceSums,
    check_score,
    is_classifier,
    output_tensors,
    score_columns,
)
from depthfx.measure.importance.entries import MergeRule, entry_plan
from depthfx.measure.importance.methods import ImportanceResult
from depthfx.measure.importance.networks import build_network
from depthfx.measure.importance.proxy_data import Batches, proxy_batches
from depthfx.records import Analysis
from depthfx.solver import ImportanceKey


def recalibrated_proxy(
    analysis: Analysis,
    keys: list[ImportanceKey],
    data: Any,
    merges: MergeRule | None,
    *,
    score: str,
    images: int | None,
    batch_size: int,
    seed: int,
    progress: bool,
) -> ImportanceResult:
    """Every entry's network, BN re-estimated on the proxy's batches, against the base network
    re-estimated the same way (module docstring)."""
    from tqdm.auto import tqdm

    example = torch.zeros(analysis.example_shapes[0])
    batches, is_random = proxy_batches(data, example, images, batch_size, seed)
    batches = [(x.to(memory_format=torch.channels_last), y) for x, y in batches]
    labelled = batches[0][1] is not None
    refs = _outputs(_recalibrated(analysis, None, merges, batches), batches)
    classifier = is_classifier(refs[0])
    score = check_score(score, classifier, labelled, "exact")
    base_correct = sum(
        int((r[0].argmax(1) == y).sum()) for r, (_, y) in zip(refs, batches, strict=True)
    ) if labelled and classifier else 0  # fmt: skip
    stats = {k: DivergenceSums() for k in keys}
    for key in tqdm(keys, desc="importance (proxy, BN re-estimated)", unit="entry",
                    disable=None if progress else True):  # fmt: skip
        net = _recalibrated(analysis, key, merges, batches)
        for (_, y), ref, out in zip(batches, refs, _outputs(net, batches), strict=True):
            stats[key].add(ref, out, y)
    columns, metrics = score_columns(stats, score, classifier, labelled, base_correct)
    meta = {
        "method": "proxy",
        "fingerprint": {
            "method": "proxy",
            "estimate": "exact",
            "bn_recalibration": True,
            "score": score,
            "images": sum(len(x) for x, _ in batches),
            "random_inputs": is_random,
            "seed": seed,
        },
    }
    return ImportanceResult({k: metrics[k][0] for k in keys}, columns, metrics, meta)


def _recalibrated(
    analysis: Analysis, key: ImportanceKey | None, merges: MergeRule | None, batches: Batches
) -> fx.GraphModule:
    """The entry's eval-mode network on private module copies, BN re-estimated on ``batches``."""
    own = copy.deepcopy(analysis.graph_module).to(memory_format=torch.channels_last)
    plan = entry_plan(analysis, key, merges)
    net = build_network(dataclasses.replace(analysis, graph_module=own), plan)
    return recalibrate_bn(net, [x for x, _ in batches]).eval()


def _outputs(net: fx.GraphModule, batches: Batches) -> list[list[torch.Tensor]]:
    with torch.inference_mode():
        return [output_tensors(net(x)) for x, _ in batches]


__all__ = ["recalibrated_proxy"]
