"""The exact proxy (``estimate="exact"``): every entry's network run to the output.

The entries that share their network up to their last merge boundary q <= st share that head
(:mod:`.prefixes`): it runs once per batch and group, each entry only from q onward, against the
base network's outputs on the same batch; head + tail is the entry's network, so nothing is
approximated, only repeated work saved. It is slower than the Fisher proxy
(:mod:`depthfx.measure.importance.fisher`) but approximates nothing, and only it can score
Δ top-1 (``score="accuracy"``, with labelled data).
"""

from __future__ import annotations

from typing import Any

import torch

from depthfx.measure.importance.divergence import (
    DivergenceSums,
    check_score,
    is_classifier,
    output_tensors,
    score_columns,
)
from depthfx.measure.importance.entries import MergeRule, PlanOf, entry_plan
from depthfx.measure.importance.methods import ImportanceResult
from depthfx.measure.importance.networks import build_network
from depthfx.measure.importance.prefixes import prefix_groups, split_group
from depthfx.measure.importance.proxy_data import proxy_inputs
from depthfx.records import Analysis
from depthfx.solver import ImportanceKey


def exact_proxy(
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
    plan_of: PlanOf | None = None,
) -> ImportanceResult:
    """Every entry's network run to the output on the proxy's batches, the networks that agree
    up to their last merge boundary before the block sharing that prefix (module docstring).
    ``plan_of``: each key's network plan (default :func:`entry_plan`; LayerMerge variants
    bring their own, with pruned convs)."""
    from tqdm.auto import tqdm

    analysis, batches, is_random = proxy_inputs(analysis, data, images, batch_size, seed)
    labelled = batches[0][1] is not None
    with torch.inference_mode():
        base = build_network(analysis, entry_plan(analysis, None, merges))
        refs = [output_tensors(base(x)) for x, _ in batches]
    classifier = is_classifier(refs[0])
    score = check_score(score, classifier, labelled, "exact")
    base_correct = sum(
        int((r[0].argmax(1) == y).sum()) for r, (_, y) in zip(refs, batches, strict=True)
    ) if labelled and classifier else 0  # fmt: skip

    # Entries whose networks agree up to their last boundary q <= st share that prefix: it
    # runs once per batch and group (:mod:`.prefixes`).
    plans = {k: entry_plan(analysis, k, merges) if plan_of is None else plan_of(k) for k in keys}
    groups = prefix_groups(analysis, keys, plans)
    stats = {k: DivergenceSums() for k in keys}
    bar = tqdm(
        total=len(keys) * len(batches), desc="importance (proxy)", unit="run",
        disable=None if progress else True,
    )  # fmt: skip
    with torch.inference_mode(), bar:
        for group_key, group in groups.items():
            head, tails = split_group(
                analysis, group_key, [build_network(analysis, plans[k]) for k in group]
            )
            for (x, y), ref in zip(batches, refs, strict=True):
                values = head(x)
                for key, tail in zip(group, tails, strict=True):
                    stats[key].add(ref, output_tensors(tail(*values)), y)
                    bar.update(1)
    columns, metrics = score_columns(stats, score, classifier, labelled, base_correct)
    scores = {k: metrics[k][0] for k in keys}
    n_images = sum(len(x) for x, _ in batches)
    meta = {
        "method": "proxy",
        "fingerprint": {
            "method": "proxy",
            "score": score,
            "images": n_images,
            "random_inputs": is_random,
            "seed": seed,
        },
    }
    return ImportanceResult(scores, columns, metrics, meta)


__all__ = ["exact_proxy"]
