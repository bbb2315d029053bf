"""The exact proxy (``estimate="exact"``): every entry's network run to the output.

Pattern: the entries are grouped by the last merge boundary q <= st of their networks. The
network up to position q is identical for all of them (checked node by node).

Rewrite: per group, the network is split at q into a head (the prefix up to the frontier
values) and one tail per entry; the head runs once per batch and group, each entry only from q
onward, against the base network's outputs on the same batch.

Why it is exact: the head computes the very values each entry's full network computes up to q,
so head + tail is that network; only repeated work is saved. It is slower than the Fisher proxy
(:mod:`depthfx.measure.importance.fisher`) but approximates nothing, and only it can score
Δ top-1 (``score="accuracy"``, with labelled data).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import fx

from depthfx.errors import DepthFXError
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
from depthfx.measure.importance.proxy_data import proxy_inputs
from depthfx.measure.importance.regions import signature
from depthfx.records import Analysis, Chain
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
    chains = {c.index: c for c in analysis.chains}
    with torch.inference_mode():
        base = build_network(analysis, entry_plan(analysis, None, merges))
        refs = [output_tensors(base(x)) for x, _ in batches]
    classifier = is_classifier(refs[0])
    score = check_score(score, classifier, labelled, "exact")
    base_correct = sum(
        int((r[0].argmax(1) == y).sum()) for r, (_, y) in zip(refs, batches, strict=True)
    ) if labelled and classifier else 0  # fmt: skip

    # Entries whose networks agree up to the last boundary q <= st (same chain, q, boundaries
    # and activations before q) share that prefix: it runs once per batch and group.
    groups: dict[tuple[Any, ...], list[ImportanceKey]] = {}
    plans = {k: entry_plan(analysis, k, merges) if plan_of is None else plan_of(k) for k in keys}
    for key in keys:
        cplan = plans[key].chains[[c.index for c in analysis.chains].index(key[0])]
        q = max([p for p in cplan.merge_pos if p <= key[1]] + [0])
        bounds = tuple(p for p in cplan.merge_pos if p <= q)
        acts = tuple(p for p in cplan.act_pos if p < q)
        groups.setdefault((key[0], q, bounds, acts), []).append(key)
    stats = {k: DivergenceSums() for k in keys}
    bar = tqdm(
        total=len(keys) * len(batches), desc="importance (proxy)", unit="run",
        disable=None if progress else True,
    )  # fmt: skip
    with torch.inference_mode(), bar:
        for (c, q, _, _), group in groups.items():
            cut = _linear_node(analysis, chains[c], q)
            nets = [build_network(analysis, plans[k]) for k in group]
            prefix = _ancestors(nets[0], cut)
            sig = {n.name: signature(nets[0], n) for n in nets[0].graph.nodes if n.name in prefix}
            frontier: set[str] = set()
            for net in nets:
                for n in net.graph.nodes:
                    if n.name in prefix:
                        if signature(net, n) != sig.get(n.name):
                            raise DepthFXError(f"internal: entries {group} differ before {q}")
                        if any(u.name not in prefix for u in n.users):
                            frontier.add(n.name)
            order = sorted(frontier)
            head = _split(nets[0], prefix, order, outputs=True)
            tails = [_split(net, prefix, order, outputs=False) for net in nets]
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


def _linear_node(analysis: Analysis, chain: Chain, p: int) -> str:
    """Name of the node holding position p before its activation (as ``prepare`` sees it)."""
    if p == 0:
        return chain.input_node
    slot = chain.activations.get(p)
    if slot is None:
        return chain.position_nodes[p]
    if slot.kind == "norm_act":
        return slot.node
    node = next(n for n in analysis.graph_module.graph.nodes if n.name == slot.node)
    arg = node.args[0] if node.args else node.kwargs.get("input")
    return arg.name


def _ancestors(gm: fx.GraphModule, name: str) -> set[str]:
    nodes = {n.name: n for n in gm.graph.nodes}
    seen = {name}
    stack = [nodes[name]]
    while stack:
        for arg in stack.pop().all_input_nodes:
            if arg.name not in seen:
                seen.add(arg.name)
                stack.append(arg)
    return seen


def _split(
    gm: fx.GraphModule, prefix: set[str], frontier: list[str], outputs: bool
) -> fx.GraphModule:
    """``outputs=True``: the prefix network returning the frontier values; else the rest of
    the network taking them as inputs (followed by the original inputs outside the prefix)."""
    gm = fx.GraphModule(gm, copy.deepcopy(gm.graph), type(gm).__name__)
    graph = gm.graph
    nodes = {n.name: n for n in graph.nodes}
    if outputs:
        out = next(n for n in graph.nodes if n.op == "output")
        with graph.inserting_before(out):
            graph.output(tuple(nodes[f] for f in frontier))
        graph.erase_node(out)
        gm.graph.eliminate_dead_code()
    else:
        first = next(iter(graph.nodes))
        with graph.inserting_before(first):
            holders = [graph.placeholder(f"frontier_{i}") for i in range(len(frontier))]
        for name, holder in zip(frontier, holders, strict=True):
            nodes[name].replace_all_uses_with(holder)
        for node in reversed(list(graph.nodes)):
            if node.name in prefix and node not in holders:
                graph.erase_node(node)
    graph.lint()
    gm.recompile()
    return gm.eval()


__all__ = ["exact_proxy"]
