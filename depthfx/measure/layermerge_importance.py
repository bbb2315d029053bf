"""Score a real model's LayerMerge variants with the importance proxy: a
:class:`LayerMergeImportanceTable`.

One entry network per variant: the original network with block (st, end) merged into one group
that keeps only the variant's convs (the others pruned, :mod:`depthfx.passes.prune_convs`), no
activation inside the block, the activation at st as in the original and one at its end
(:func:`end_activation`). It is scored by the existing proxy (``estimate="fisher"`` or
``"exact"``) on the same data as the ICML'23 table, so that the keep-all variant of a block is
the ICML'23 entry (chain, st, end, a_st, 1) and both tables share one scale, which the combined
DP (spec §7.19) needs. Exactly so with the paper's groups (S = A); an ICML'23 table scored with
``latency=`` (the deployed groups) differs outside the block, by the groups' moved paddings.

The importance is the proxy's raw score (−KL, ≤ 0), not the paper's exp(Δacc/100): an
exp-normalised objective is ≈ the number of blocks (spec §4.8, pitfall 7), while the raw score
sums the damage of each block, as the ICML'23 proxy table does (norm "none").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from typing import Any

import torch
from torch import nn

from depthfx.errors import DepthFXError
from depthfx.measure.importance.entries import entry_plan
from depthfx.measure.importance.exact import exact_proxy
from depthfx.measure.importance.fisher import FISHER_BATCH, fisher_proxy
from depthfx.measure.layermerge_latency import shape_key
from depthfx.measure.layermerge_variants import BlockVariant, chain_variants
from depthfx.passes.analyze import analyze
from depthfx.plans import Plan
from depthfx.records import Analysis, Chain
from depthfx.solver import ImportanceKey
from depthfx.solver.layermerge_tables import LayerMergeImportanceTable


def end_activation(chain: Chain, st: int, end: int) -> bool:
    """Whether a block's end carries an activation: always, except a length-1 block at a linear
    position, which is the original conv unchanged (spec §1.3's MBV2 rule, for any chain)."""
    return end in chain.activations or end - st > 1


def variant_plan(analysis: Analysis, variant: BlockVariant) -> Plan:
    """The entry network of one variant (module doc): an ICML'23 entry plan with pruned convs."""
    index = [c.index for c in analysis.chains].index(variant.chain)
    chain = analysis.chains[index]
    st, end = variant.st, variant.end
    key = (chain.index, st, end, int(st in chain.activations), int(end_activation(chain, st, end)))
    plan = entry_plan(analysis, key)
    chains = list(plan.chains)
    chains[index] = dataclasses.replace(chains[index], pruned=variant.pruned)
    return dataclasses.replace(plan, chains=tuple(chains))


def measure_layermerge_importance(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    data: Any,
    *,
    chain: int = 0,
    analysis: Analysis | None = None,
    estimate: str = "fisher",
    score: str = "auto",
    images: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = False,
    only: Collection[tuple[int, int, tuple[int, ...]]] | None = None,
) -> LayerMergeImportanceTable:
    """Proxy score of every LayerMerge variant of chain ``chain``, in variant order; ``only``:
    score just these (st, end, kept), e.g. the rows a latency table did not skip."""
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else example_inputs
    if analysis is None:
        analysis = analyze(model, tuple(inputs), training=False)  # type: ignore[arg-type]
    variants = [
        v
        for v in chain_variants(analysis)
        if v.chain == chain and (only is None or (v.st, v.end, v.kept) in only)
    ]
    if not variants:
        raise DepthFXError(f"{type(model).__name__}: chain {chain} has no LayerMerge variant")
    # A variant's proxy key: (chain, st, end, 0, its index); the proxies group by (chain, st).
    keys: list[ImportanceKey] = [(v.chain, v.st, v.end, 0, n) for n, v in enumerate(variants)]
    plans = {k: variant_plan(analysis, v) for k, v in zip(keys, variants, strict=True)}
    common: dict[str, Any] = {"score": score, "images": images, "seed": seed}
    if estimate == "fisher":
        result = fisher_proxy(
            analysis, keys, data, None, batch_size=batch_size or FISHER_BATCH,
            progress=progress, plan_of=plans.__getitem__, **common,
        )  # fmt: skip
    elif estimate == "exact":
        result = exact_proxy(
            analysis, keys, data, None, batch_size=batch_size or 64, progress=progress,
            plan_of=plans.__getitem__, **common,
        )  # fmt: skip
    else:
        raise DepthFXError(f"unknown estimate {estimate!r}: use 'fisher' or 'exact'")
    rows = [(shape_key(v), v.kept, result.scores[k]) for k, v in zip(keys, variants, strict=True)]
    meta = {**result.meta, "estimate": estimate, "chain": chain}
    return LayerMergeImportanceTable(
        rows, source=f"<{type(model).__name__} variant proxy>", meta=meta
    )


__all__ = ["end_activation", "measure_layermerge_importance", "variant_plan"]
