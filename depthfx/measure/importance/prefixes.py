"""Shared prefixes of entry networks: the proxies that run entries to the output
(:mod:`.exact`, :mod:`.recalibrated`) run the common part of a group of entries once.

Pattern: the entries are grouped by the last merge boundary q <= st of their networks (same
chain, q, boundaries and activations before q). The network up to position q is then identical
for all of them (checked node by node).

Rewrite: per group, the network is split at q into a head (the prefix up to the frontier
values) and one tail per entry that takes those values as inputs.

Why it is exact: the head computes the very values each entry's full network computes up to q,
so head + tail is that network; only repeated work is saved.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import fx

from depthfx.errors import DepthFXError
from depthfx.measure.importance.regions import signature
from depthfx.plans import Plan
from depthfx.records import Analysis, Chain
from depthfx.solver import ImportanceKey

#: A group of entries sharing a prefix: (chain index, q, boundaries <= q, activations < q).
GroupKey = tuple[Any, ...]


def prefix_groups(
    analysis: Analysis, keys: list[ImportanceKey], plans: dict[ImportanceKey, Plan]
) -> dict[GroupKey, list[ImportanceKey]]:
    """The entries grouped by the prefix their networks share (module docstring)."""
    indices = [c.index for c in analysis.chains]
    groups: dict[GroupKey, list[ImportanceKey]] = {}
    for key in keys:
        cplan = plans[key].chains[indices.index(key[0])]
        q = max([p for p in cplan.merge_pos if p <= key[1]] + [0])
        bounds = tuple(p for p in cplan.merge_pos if p <= q)
        acts = tuple(p for p in cplan.act_pos if p < q)
        groups.setdefault((key[0], q, bounds, acts), []).append(key)
    return groups


def split_group(
    analysis: Analysis,
    group: GroupKey,
    nets: list[fx.GraphModule],
    head_net: fx.GraphModule | None = None,
) -> tuple[fx.GraphModule, list[fx.GraphModule]]:
    """(head, one tail per net) for the networks of one group; the head is cut from
    ``head_net`` (default ``nets[0]``: pass a network on other modules to keep the head's
    modules apart from every tail's). ``tail(*head(x))`` is ``net(x)`` for every net."""
    chain = next(c for c in analysis.chains if c.index == group[0])
    cut = _linear_node(analysis, chain, group[1])
    prefix = _ancestors(nets[0], cut)
    sig = {n.name: signature(nets[0], n) for n in nets[0].graph.nodes if n.name in prefix}
    frontier: set[str] = set()
    for net in [*nets, *([head_net] if head_net is not None else [])]:
        for n in net.graph.nodes:
            if n.name in prefix:
                if signature(net, n) != sig.get(n.name):
                    raise DepthFXError(f"internal: the networks of {group} differ before q")
                if any(u.name not in prefix for u in n.users):
                    frontier.add(n.name)
    order = sorted(frontier)
    head = _split(nets[0] if head_net is None else head_net, prefix, order, outputs=True)
    return head, [_split(net, prefix, order, outputs=False) for net in nets]


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


__all__ = ["GroupKey", "prefix_groups", "split_group"]
