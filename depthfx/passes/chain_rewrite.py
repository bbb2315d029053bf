"""The state the chain-rewrite passes share while they rewrite one chain of a plan.

``rewrite_chain`` (in ``depthfx.passes.prepare``) makes one :class:`ChainRewrite` per chain and
runs ``CHAIN_PASSES`` on it in order; each pass edits ``gm`` in place and fills in what later
passes read: the activation passes record each position's ``linear`` and ``value`` nodes (and
the activations taken out of BN+act modules, ``detached``), the padding move records each group
(``records``) and its padded input (``padded``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import fx, nn

from depthfx.passes.group_record import GroupRecord
from depthfx.plans import ChainPlan
from depthfx.records import Chain, ConvInfo, Residual


@dataclass
class ChainRewrite:
    """One chain being rewritten.

    ``nodes`` maps the names of the graph before any rewrite to its nodes; the name of a node
    that ``prune_convs`` erased maps to the value that replaced it. ``linear[p]``: the value
    of position p after BN and residual add, before its activation;
    ``value[p]``: what the next conv reads (after the activation, if p keeps one). Both hold
    position 0 (the chain input) from the start. ``detached[p]``: (name, module) of the
    activation taken out of a timm BN+act module at a position p in A, to be called
    explicitly. ``padded[start]``: the explicit pad of the input of the multi-conv group that
    starts at ``start``.
    """

    gm: fx.GraphModule
    nodes: dict[str, fx.Node]
    index: int
    chain: Chain
    cplan: ChainPlan
    linear: dict[int, fx.Node] = field(default_factory=dict)
    value: dict[int, fx.Node] = field(default_factory=dict)
    detached: dict[int, tuple[str, nn.Module]] = field(default_factory=dict)
    padded: dict[int, fx.Node] = field(default_factory=dict)
    records: list[GroupRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.linear[0] = self.value[0] = self.nodes[self.chain.input_node]

    @property
    def pruned(self) -> set[int]:
        """The positions whose conv the plan replaces by the identity."""
        return set(self.cplan.pruned)

    def kept_convs(self, start: int, end: int) -> list[ConvInfo]:
        """The convs of positions start+1 … end that the plan does not prune."""
        pruned = self.pruned
        return [self.chain.conv(p) for p in range(start + 1, end + 1) if p not in pruned]

    @property
    def keep(self) -> set[int]:
        """The positions that keep an activation (the plan's A)."""
        return set(self.cplan.act_pos)

    def fused(self, start: int, end: int) -> list[Residual]:
        """The residuals whose body lies inside the group (start, end): merged with it."""
        return [r for r in self.chain.residuals if start <= r.src and r.dst <= end]


ChainPass = Callable[[ChainRewrite], None]


def call_after(gm: fx.GraphModule, node: fx.Node, name: str, module: nn.Module) -> fx.Node:
    """Register ``module`` as ``name`` and call it on ``node``; every other user of ``node``
    now reads the call's result instead."""
    gm.add_submodule(name, module)
    with gm.graph.inserting_after(node):
        call = gm.graph.call_module(name, (node,))
    node.replace_all_uses_with(call, delete_user_cb=lambda user: user is not call)
    return call


__all__ = ["ChainPass", "ChainRewrite", "call_after"]
