"""Chain pass 0: replace the convs the plan prunes (and their BN) by the identity (LayerMerge).

Pattern: conv p of the chain with p in the plan's ``pruned``, followed by its BN (a module, a
timm BN+act module, or ``F.batch_norm``), on a map whose shape it preserves.

Rewrite (spec §1.2, §5.1 item 3): the users of the BN's output read the conv's input instead
(before any explicit zero-pad node), and the conv, its pad node and its BN are erased with their
modules. A timm BN+act module is replaced by a :class:`PrunedNormAct` holding only its ``act``,
so its activation slot stays where the other passes find it. The erased names map to the value
that replaced them in ``rewrite.nodes``. A residual whose body is pruned empty is kept as it
is: it computes x + x, which ``convert`` fuses as 2·I; a projection residual with an empty body
is refused.

Why it is exact: this is the network the plan describes; the conv preserves the shape of its
input, so the identity fits in its place, and ``convert`` composes only the kept convs (a pruned
conv is a no-op in the composition).
"""

from __future__ import annotations

import torch
from torch import fx, nn

from depthfx.passes.chain_rewrite import ChainRewrite
from depthfx.plans import PlanError
from depthfx.records import ConvInfo


class PrunedNormAct(nn.Module):
    """What a timm BN+act module becomes when its conv is pruned: its activation alone (the
    attribute keeps the name ``act``, where ``remove_activations`` looks for it)."""

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x)


def prune_convs(rewrite: ChainRewrite) -> None:
    """Bypass and erase every pruned conv and its BN; refuse pruning a non-prunable conv."""
    chain, pruned = rewrite.chain, rewrite.pruned
    if bad := sorted(pruned - set(chain.prunable)):
        raise PlanError(
            f"chain {rewrite.index}: convs {[chain.conv(p).module for p in bad]} (positions {bad}) "
            "change the shape of their input and cannot be replaced by the identity"
        )
    for residual in chain.residuals:
        body = set(range(residual.src + 1, residual.dst + 1))
        if residual.kind == "projection" and body <= pruned:
            raise PlanError(
                f"chain {rewrite.index}: the projection residual {residual.src}->{residual.dst} "
                "would have an empty body; keep one of its convs"
            )
    for p in sorted(pruned):
        _bypass(rewrite, chain.conv(p))


def _bypass(rewrite: ChainRewrite, conv: ConvInfo) -> None:
    gm, nodes = rewrite.gm, rewrite.nodes
    graph = gm.graph
    conv_node = nodes[conv.node]
    pad_node = nodes[conv.pad_node] if conv.pad_node is not None else None
    source = (pad_node or conv_node).args[0]
    if not isinstance(source, fx.Node):
        raise PlanError(f"conv {conv.module!r} has no tensor input")
    erased: list[fx.Node] = []
    if conv.bn_kind == "norm_act":
        norm = gm.get_submodule(conv.bn)
        _set_submodule(gm, conv.bn, PrunedNormAct(norm.act))
        conv_node.replace_all_uses_with(source)
    else:
        out = nodes[conv.output_node]
        out.replace_all_uses_with(source)
        if out is not conv_node:
            erased.append(out)
    erased.append(conv_node)
    if pad_node is not None:
        erased.append(pad_node)
    for node in erased:
        graph.erase_node(node)
        nodes[node.name] = source
    for target in (conv.module, conv.bn if conv.bn_kind == "module" else None):
        if target is not None and not any(
            n.op == "call_module" and n.target == target for n in graph.nodes
        ):
            gm.delete_submodule(target)


def _set_submodule(gm: fx.GraphModule, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, leaf, module)


__all__ = ["PrunedNormAct", "prune_convs"]
