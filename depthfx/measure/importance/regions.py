"""The Fisher proxy's graph diff: each entry's changed region against the base network.

Pattern: an entry's network differs from the base network only in a small region around its
block (activations removed or added, paddings moved); everything before the region computes
the same values, everything after it computes the same function of different inputs.

Split: a graph diff (by node structure, not by chain positions, so it holds for any model
the analysis covers) splits the entry's network into

* P, the prefix: nodes structurally equal to the base's and fed only by P nodes (same values);
* R, the suffix: nodes structurally equal to the base's whose users, in both networks, are in R
  (the same function of its inputs, the frontier F: the non-R nodes R reads);
* the region between them, run exactly on the base's cached P values, giving δ_f = entry − base
  at every f in F.

Why it is exact: base prefix values → the entry's region → the base's suffix is the entry's
network (prefix and suffix compute what the entry's do); :mod:`depthfx.measure.importance.fisher`
takes the suffix to second order from there.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx
from torch.fx._lazy_graph_module import _LazyGraphModule

_OUT_OF_PLACE = {
    operator.iadd: operator.add,
    operator.isub: operator.sub,
    operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
}


@dataclass
class Region:
    """One entry's changed region: ``module(*base values of inputs)`` returns the entry's
    values of the base nodes ``outputs``. ``exact``: they are the network's outputs."""

    module: fx.GraphModule | None
    inputs: list[str]
    outputs: list[str]
    exact: bool


def signature(gm: fx.GraphModule, node: fx.Node) -> tuple[Any, ...]:
    """What a node computes from its inputs' names: equal signatures, equal functions."""
    module = repr(gm.get_submodule(node.target)) if node.op == "call_module" else None
    return node.op, str(node.target), repr(node.args), repr(node.kwargs), module


class _Keys:
    """Names that identify nodes across networks built from one capture: a captured node keeps
    its name; a node a rewrite inserted (pad, crop, activation) gets its name from a counter, so
    it is identified by what it computes from which inputs instead."""

    def __init__(self, gm: fx.GraphModule, stable: set[str]) -> None:
        self.gm = gm
        self.stable = stable
        self.memo: dict[str, Any] = {}

    def key(self, node: fx.Node) -> Any:
        if node.name in self.stable:
            return node.name
        if node.name not in self.memo:
            self.memo[node.name] = ("new", *self.signature(node))
        return self.memo[node.name]

    def signature(self, node: fx.Node) -> tuple[Any, ...]:
        def canon(a: Any) -> Any:
            return ("node", self.key(a)) if isinstance(a, fx.Node) else a

        args = fx.node.map_aggregate(node.args, canon)
        kwargs = fx.node.map_aggregate(node.kwargs, canon)
        module = repr(self.gm.get_submodule(node.target)) if node.op == "call_module" else None
        target = str(node.target) if node.name in self.stable or node.op != "call_module" else ""
        return node.op, target, repr(args), repr(kwargs), module


class RegionFinder:
    """Splits entry networks against one base network into prefix, region and suffix (module
    docstring). ``stable``: the node names of the capture both were built from. The base's keys,
    signatures and users are indexed once, not once per entry."""

    def __init__(self, base: fx.GraphModule, stable: set[str]) -> None:
        self.stable = stable
        keys = _Keys(base, stable)
        self.base_of = {keys.key(n): n for n in base.graph.nodes}
        self.base_signature = {n.name: keys.signature(n) for n in base.graph.nodes}
        self.base_users = {n.name: {keys.key(u) for u in n.users} for n in base.graph.nodes}
        output = next(n for n in base.graph.nodes if n.op == "output")
        self.base_outputs = [n.name for n in output.all_input_nodes]

    def __call__(self, entry: fx.GraphModule) -> Region:
        ek = _Keys(entry, self.stable)
        nodes = list(entry.graph.nodes)
        twin = {n.name: self.base_of.get(ek.key(n)) for n in nodes}
        same = {
            n.name
            for n in nodes
            if (b := twin[n.name]) is not None and ek.signature(n) == self.base_signature[b.name]
        }
        prefix: set[str] = set()
        for n in nodes:
            if n.name in same and all(a.name in prefix for a in n.all_input_nodes):
                prefix.add(n.name)

        def users_match(n: fx.Node) -> bool:
            b = twin[n.name]
            return b is not None and {ek.key(u) for u in n.users} == self.base_users[b.name]

        suffix: set[str] = set()
        for n in reversed(nodes):
            if n.name in same and {u.name for u in n.users} <= suffix and users_match(n):
                suffix.add(n.name)
        # A frontier value must feed the suffix only, and the same nodes as in the base:
        # otherwise the base's gradient at it would include paths the entry does not have.
        by_name = {n.name: n for n in nodes}
        changed = True
        while changed:
            changed = False
            for n in nodes:
                if n.name in suffix:
                    continue
                users = {u.name for u in n.users}
                readers = users & suffix
                if readers and (readers != users or not users_match(n)):
                    _drop(readers, suffix, by_name)
                    changed = True
        output = next(n for n in nodes if n.op == "output")
        region = [
            n for n in nodes if n.name not in prefix and n.name not in suffix and n is not output
        ]
        if not region:
            return Region(None, [], [], exact=False)
        exact = output.name not in suffix or not (suffix - {output.name})
        if exact:
            computed = list(output.all_input_nodes)
            references = self.base_outputs
            if len(references) != len(computed):
                raise ValueError("an entry's network returns a different number of outputs")
        else:
            computed = [
                n
                for n in nodes
                if n.name not in suffix and n.name not in prefix
                and any(u.name in suffix for u in n.users)
            ]  # fmt: skip
            references = [twin[n.name].name for n in computed]  # type: ignore[union-attr]
        members = {n.name for n in region}
        sources = [n for n in nodes if n.name in prefix and any(u.name in members for u in n.users)]
        sources += [n for n in computed if n.name in prefix and n not in sources]
        module = _region_module(
            entry, region, [n.name for n in sources], [n.name for n in computed]
        )
        inputs = [twin[n.name].name for n in sources]  # type: ignore[union-attr]
        return Region(module, inputs, references, exact)


def _drop(names: Iterable[str], suffix: set[str], by_name: dict[str, fx.Node]) -> None:
    """Remove nodes from the suffix and, to keep it closed under users, their suffix inputs."""
    stack = [n for n in names if n in suffix]
    while stack:
        name = stack.pop()
        if name in suffix:
            suffix.discard(name)
            stack.extend(a.name for a in by_name[name].all_input_nodes if a.name in suffix)


def _region_module(
    entry: fx.GraphModule, region: list[fx.Node], inputs: list[str], outputs: list[str]
) -> fx.GraphModule:
    graph = fx.Graph()
    env: dict[str, fx.Node] = {name: graph.placeholder(f"in_{i}") for i, name in enumerate(inputs)}
    for node in region:
        env[node.name] = graph.node_copy(node, lambda a: env[a.name])
    graph.output(tuple(env[o] for o in outputs))
    gm = _LazyGraphModule(entry, graph, "Region")  # shared_regions runs its nodes, not its code
    return out_of_place(gm)


def with_values(base: fx.GraphModule, names: list[str]) -> fx.GraphModule:
    """``base`` returning ``(outputs, (values of names…))``, out of place so that no recorded
    value is overwritten later by an in-place activation or ``+=``."""
    gm = fx.GraphModule(base, copy.deepcopy(base.graph), "WithValues")
    graph = gm.graph
    by_name = {n.name: n for n in graph.nodes}
    output = next(n for n in graph.nodes if n.op == "output")
    with graph.inserting_before(output):
        graph.output((output.args[0], tuple(by_name[n] for n in names)))
    graph.erase_node(output)
    return out_of_place(gm)


def out_of_place(gm: fx.GraphModule) -> fx.GraphModule:
    """Rewrite in-place ops (``inplace=True`` modules and functions, ``x += y``, ``x.relu_()``)
    to their out-of-place forms; modules are copied, never changed (they are the user's)."""
    for i, node in enumerate(list(gm.graph.nodes)):
        if node.op == "call_module":
            module = gm.get_submodule(node.target)
            if getattr(module, "inplace", False):
                module = copy.deepcopy(module)
                module.inplace = False
                name = f"_out_of_place_{i}"
                gm.add_submodule(name, module)
                node.target = name
        elif node.op == "call_function":
            if node.target in _OUT_OF_PLACE:
                node.target = _OUT_OF_PLACE[node.target]
            elif node.kwargs.get("inplace"):
                node.kwargs = {**node.kwargs, "inplace": False}
            elif (name := getattr(node.target, "__name__", "")).endswith("_") and not (
                name.startswith("_")
            ):
                functional = getattr(torch, name[:-1], None) or getattr(F, name[:-1], None)
                if functional is not None:
                    node.target = functional
        elif (
            node.op == "call_method"
            and node.target.endswith("_")
            and not node.target.startswith("_")
            and hasattr(torch.Tensor, node.target[:-1])
        ):
            node.target = node.target[:-1]
    gm.graph.lint()
    gm.recompile()
    return gm.eval()


__all__ = ["Region", "RegionFinder", "out_of_place", "signature", "with_values"]
