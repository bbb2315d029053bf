"""Chain pass 1: remove the activations the plan drops; take timm BN+act activations out.

Pattern: an activation slot of the chain — an activation call at position p, or a timm BN+act
module whose ``act`` applies it.

Rewrite: at a position not in A the call site is bypassed (its users read its input) and erased;
the site, not the module, since one ``nn.ReLU`` may serve several sites. A BN+act module gets
its ``act`` replaced by ``nn.Identity``; when p is in A the ``act`` is kept on the
``ChainRewrite`` for ``insert_activations`` to call explicitly, so every kept activation ends up
a node of its own. Records ``linear[p]`` and ``value[p]`` of every position that has a slot.

Why it is exact: this is the network the plan describes (A is the set of positions that keep a
nonlinearity), and nothing else changes.
"""

from __future__ import annotations

from torch import fx, nn

from depthfx.passes.chain_rewrite import ChainRewrite
from depthfx.plans import PlanError


def remove_activations(rewrite: ChainRewrite) -> None:
    """Bypass every activation slot not in A; empty the ``act`` of timm BN+act modules."""
    gm, nodes, keep = rewrite.gm, rewrite.nodes, rewrite.keep
    for p in range(1, rewrite.chain.num_convs + 1):
        slot = rewrite.chain.activations.get(p)
        if slot is None:
            continue
        if slot.kind == "norm_act":
            node = nodes[slot.node]
            rewrite.linear[p] = rewrite.value[p] = node
            act = _detach_norm_act(gm, node, slot.module)
            if p in keep:
                rewrite.detached[p] = (slot.module.replace(".", "_"), act)
        else:
            act = nodes[slot.node]
            rewrite.linear[p] = _activation_input(act)
            rewrite.value[p] = act
            if p not in keep:
                act.replace_all_uses_with(rewrite.linear[p])
                gm.graph.erase_node(act)
                rewrite.value[p] = rewrite.linear[p]


def _activation_input(node: fx.Node) -> fx.Node:
    arg = node.args[0] if node.args else node.kwargs.get("input")
    if not isinstance(arg, fx.Node):
        raise PlanError(f"activation {node.name!r} has no tensor input")
    return arg


def _detach_norm_act(gm: fx.GraphModule, node: fx.Node, act_module: str | None) -> nn.Module:
    """A timm BN+act call: replace its activation by ``nn.Identity``; returns the activation.

    ``act_module`` is the qualified name of the BN+act module's ``act``.
    """
    if act_module is None:
        raise PlanError(f"BN+act node {node.name!r} names no activation module")
    parent, _, attr = act_module.rpartition(".")
    norm = gm.get_submodule(parent)
    act = getattr(norm, attr)
    setattr(norm, attr, nn.Identity())
    return act


__all__ = ["remove_activations"]
