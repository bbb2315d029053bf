"""The entry networks the proxy runs, built from one eval capture.

Per entry only the graph is edited, with ``prepare``'s own chain rewrite
(:func:`depthfx.passes.prepare.rewrite_chain`), so each is exactly the prepared network, padding
moves included, at the cost of a graph copy instead of a model copy.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import fx
from torch.fx._lazy_graph_module import _LazyGraphModule

from depthfx.passes.fold_bn import fold_bn_modules
from depthfx.passes.prepare import rewrite_chain
from depthfx.plans import Plan
from depthfx.records import Analysis


def build_network(analysis: Analysis, plan: Plan) -> fx.GraphModule:
    """The eval-mode prepared network of ``plan`` built on the analysis's eval capture.

    It runs ``prepare``'s own chain rewrite on a copy of the graph, so it is the network
    ``prepare(model, plan).eval()`` computes; leaf modules are shared with the model (the
    BN+act modules the rewrite edits are copied first), so it costs milliseconds. Its Python
    code is generated on its first call only (a lazy GraphModule): the proxy reads most of
    these networks as graphs and never runs them.
    """
    base = analysis.graph_module
    gm = _LazyGraphModule(base, copy.deepcopy(base.graph), type(base).__name__)
    for chain in analysis.chains:
        for slot in chain.activations.values():
            if slot.kind == "norm_act" and slot.module:
                parent, _, _ = slot.module.rpartition(".")
                owner, _, leaf = parent.rpartition(".")
                setattr(
                    gm.get_submodule(owner) if owner else gm,
                    leaf,
                    copy.deepcopy(gm.get_submodule(parent)),
                )
    nodes = {n.name: n for n in gm.graph.nodes}
    for index, (chain, cplan) in enumerate(zip(analysis.chains, plan.chains, strict=True)):
        cplan.validate(chain.barriers, [(r.src, r.dst) for r in chain.residuals])
        rewrite_chain(gm, nodes, index, chain, cplan)
    gm.graph.lint()
    gm.recompile()
    return gm.eval()


def fast_copy(analysis: Analysis) -> Analysis:
    """The analysis on a private eval-mode channels-last copy of its modules with BN folded
    into the convs: the proxy's networks run about 3× (channels-last) and 1.5× (folded BN)
    faster on CPU, and the user's model is never touched. Its parameters need no gradients,
    so the Fisher proxy's backward passes compute activation gradients only."""
    gm = copy.deepcopy(analysis.graph_module).eval().requires_grad_(False)
    fold_bn_modules(gm)
    gm = gm.to(memory_format=torch.channels_last)
    return dataclasses.replace(analysis, graph_module=gm)


__all__ = ["build_network", "fast_copy"]
