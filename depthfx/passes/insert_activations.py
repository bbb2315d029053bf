"""Chain pass 2: call every kept activation explicitly, adding those the plan adds.

Pattern: a position p in A without an activation node — linear in the original, or with its
activation inside a timm BN+act module (taken out by ``remove_activations``).

Rewrite: the activation is registered on the GraphModule and called on the position's node —
after the residual add when there is one (spec §1.2) — and every other user of that node reads
it instead. At a linear position it is a fresh activation of the chain's own type
(``Chain.activation_for``), named ``depthfx_act_<chain>_<p>``; after a BN+act module it is that
module's own ``act``, named after it. Records ``linear[p]`` and ``value[p]`` of every position
without a slot.

Why it is exact: this is the network the plan describes; a moved ``act`` is the same module on
the same value, a new one has no parameters, and no merge group spans it (A ⊆ S).
"""

from __future__ import annotations

from torch import fx

from depthfx.passes.chain_rewrite import ChainRewrite, call_after
from depthfx.plans import PlanError
from depthfx.records import Chain


def insert_activations(rewrite: ChainRewrite) -> None:
    """Record the linear positions; call an activation at each position in A that lacks one."""
    chain, keep = rewrite.chain, rewrite.keep
    for p in range(1, chain.num_convs + 1):
        if p in rewrite.detached:
            name, act = rewrite.detached[p]
            rewrite.value[p] = call_after(rewrite.gm, rewrite.linear[p], name, act)
        elif chain.activations.get(p) is None:
            rewrite.linear[p] = rewrite.nodes[chain.position_nodes[p]]
            rewrite.value[p] = (
                _insert_activation(rewrite.gm, rewrite.linear[p], chain, rewrite.index, p)
                if p in keep
                else rewrite.linear[p]
            )


def _insert_activation(
    gm: fx.GraphModule, node: fx.Node, chain: Chain, index: int, position: int
) -> fx.Node:
    """Insert a fresh activation of the chain's type after ``node``; returns the new node."""
    template = chain.activation_for(position)
    if template is None:
        raise PlanError(
            f"the plan activates position {position} of a chain that has no activation to copy"
        )
    return call_after(gm, node, f"depthfx_act_{index}_{position}", template.make())


__all__ = ["insert_activations"]
