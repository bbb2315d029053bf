"""prepare: turn a model and a Plan into the trainable network that ``convert`` merges exactly.

Per chain of the plan, ``rewrite_chain`` runs the chain passes of ``CHAIN_PASSES`` in order
(each module's docstring says pattern → rewrite → why it is exact):

0. :func:`~depthfx.passes.prune_convs.prune_convs`: the convs the plan prunes, and their BN,
   become the identity (LayerMerge).
1. :func:`~depthfx.passes.remove_activations.remove_activations`: bypass the activation sites
   not in A; split timm BN+act modules so every kept activation is a node of its own.
2. :func:`~depthfx.passes.insert_activations.insert_activations`: a fresh activation of the
   chain's type at each position in A that is linear in the original (spec §1.2).
3. :func:`~depthfx.passes.move_padding.move_padding`: each merge group zero-pads only its
   input, every kept conv inside pads nothing (spec §5.1); records the groups for ``convert``.
4. :func:`~depthfx.passes.align_residuals.align_residuals`: residuals fused inside a group read
   their identity (or projection input) at the body's padding, cropped to the body's output.

The result is an ordinary ``fx.GraphModule``: BN, dropout and stochastic depth keep their
train/eval behaviour, the surviving modules keep their ``state_dict`` keys, and the groups it
prepared are recorded on it (``PREPARED_ATTR``, :mod:`depthfx.passes.group_record`) for
``convert``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import fx, nn

from depthfx.passes.align_residuals import align_residuals
from depthfx.passes.analyze import analyze
from depthfx.passes.chain_rewrite import ChainPass, ChainRewrite
from depthfx.passes.group_record import PREPARED_ATTR, GroupRecord, PreparedInfo
from depthfx.passes.insert_activations import insert_activations
from depthfx.passes.move_padding import move_padding
from depthfx.passes.prune_convs import prune_convs
from depthfx.passes.remove_activations import remove_activations
from depthfx.plans import ChainPlan, Plan, PlanError
from depthfx.records import Analysis, Chain

#: The chain rewrite, in order: later passes read what earlier ones record on the ChainRewrite.
CHAIN_PASSES: tuple[ChainPass, ...] = (
    prune_convs,
    remove_activations,
    insert_activations,
    move_padding,
    align_residuals,
)


def prepare(
    model: nn.Module,
    plan: Plan,
    example_inputs: Sequence[torch.Tensor] | None = None,
) -> fx.GraphModule:
    """Apply ``plan`` to a copy of ``model``; returns a trainable GraphModule (train mode)."""
    inputs = _example_inputs(plan, example_inputs)
    model = copy.deepcopy(model).train()
    analysis = analyze(model, inputs, strided=plan.strided, exclude=plan.exclude, training=True)
    gm = analysis.graph_module
    chains = _match_chains(analysis, plan)
    nodes = {n.name: n for n in gm.graph.nodes}
    records: list[GroupRecord] = []
    for index, (chain, cplan) in enumerate(chains):
        records.extend(rewrite_chain(gm, nodes, index, chain, cplan))
    gm.graph.lint()
    gm.recompile()
    setattr(
        gm,
        PREPARED_ATTR,
        PreparedInfo(plan, tuple(records), tuple(tuple(t.shape) for t in inputs)),
    )
    return gm.train()


def rewrite_chain(
    gm: fx.GraphModule,
    nodes: dict[str, fx.Node],
    index: int,
    chain: Chain,
    cplan: ChainPlan,
) -> list[GroupRecord]:
    """Run ``CHAIN_PASSES`` on chain number ``index`` of ``gm`` (edited in place; ``nodes``
    maps the names of the graph before any rewrite to its nodes); returns the chain's groups."""
    rewrite = ChainRewrite(gm, nodes, index, chain, cplan)
    for chain_pass in CHAIN_PASSES:
        chain_pass(rewrite)
    return rewrite.records


def _example_inputs(
    plan: Plan, example_inputs: Sequence[torch.Tensor] | None
) -> tuple[torch.Tensor, ...]:
    if example_inputs is not None:
        return tuple(example_inputs)
    if not plan.input_shapes:
        raise PlanError("the plan records no input shapes: pass example_inputs")
    generator = torch.Generator().manual_seed(0)
    return tuple(torch.randn(shape, generator=generator) for shape in plan.input_shapes)


def _match_chains(analysis: Analysis, plan: Plan) -> list[tuple[Chain, ChainPlan]]:
    by_convs = {tuple(c.node for c in chain.convs): chain for chain in analysis.chains}
    matched = []
    for cplan in plan.chains:
        chain = by_convs.get(tuple(cplan.convs))
        if chain is None:
            raise PlanError(
                f"the plan's chain {cplan.convs[0]!r}…{cplan.convs[-1]!r} "
                f"({cplan.num_convs} convs) is not a chain of this model"
            )
        cplan.validate(chain.barriers, [(r.src, r.dst) for r in chain.residuals])
        matched.append((chain, cplan))
    return matched


__all__ = ["CHAIN_PASSES", "prepare", "rewrite_chain"]
