"""Chain pass 3: move each merge group's padding to its input, and record the group.

Pattern: a merge group (i, j) of the plan (consecutive positions of S) keeping several convs
(pruned convs are gone already: ``prune_convs`` runs first).

Rewrite (spec §5.1, generalised per side, per axis and through strides): the group zero-pads
only its input, by P = Σ_k (Π_{m<k} s_m)·p_k (:func:`depthfx.algebra.group_padding`), with one
explicit ``F.pad`` right after the input; every conv inside pads nothing (a plain
``nn.Conv2d`` sharing the parameters; an explicit pad node before it, as TF "same" padding
makes, is bypassed). Every group, one conv or several, is recorded as a
:class:`~depthfx.passes.group_record.GroupRecord` for ``convert``.

Why it is exact: convs compose into one conv only when nothing is padded between them; the
original zero-pads every intermediate map and the biases leak into those pads, so without this
move the merged conv would differ at the borders. After it, the prepared network *is* the
composition ``convert`` merges, before any fine-tuning. Convs that pad with another mode than
zeros cannot be moved, and are refused in groups of several convs.
"""

from __future__ import annotations

import logging

import torch.nn.functional as F
from torch import fx, nn

from depthfx.algebra import group_padding
from depthfx.passes.chain_rewrite import ChainRewrite
from depthfx.passes.group_record import ConvStep, GroupRecord, ResidualStep
from depthfx.plans import PlanError
from depthfx.records import ConvInfo

logger = logging.getLogger(__name__)


def move_padding(rewrite: ChainRewrite) -> None:
    """Record every group of the plan; pad each multi-conv group's input once."""
    gm, nodes, chain = rewrite.gm, rewrite.nodes, rewrite.chain
    graph = gm.graph
    for start, end in rewrite.cplan.groups():
        convs = rewrite.kept_convs(start, end)
        pad = group_padding(convs)
        steps = tuple(ConvStep.of(c) for c in convs)
        residual_steps = tuple(
            ResidualStep(
                r.src, r.dst, r.kind, None if r.shortcut is None else ConvStep.of(r.shortcut)
            )
            for r in rewrite.fused(start, end)
        )
        rewrite.records.append(
            GroupRecord(
                rewrite.index,
                start,
                end,
                rewrite.value[start].name,
                rewrite.linear[end].name,
                pad,
                steps,
                residual_steps,
                tuple(sorted(p for p in rewrite.pruned if start < p <= end)),
            )
        )
        for conv in convs:
            if conv.padding_mode != "zeros" and len(convs) > 1:
                raise PlanError(
                    f"conv {conv.module!r} pads with mode {conv.padding_mode!r}: it cannot be "
                    "merged with other convs (moving its padding would change the function)"
                )
        if len(convs) == 1:
            continue

        # Move every conv's padding to one explicit pad of the group input.
        for conv in convs:
            _strip_padding(gm, nodes, conv)
        first = nodes[convs[0].node]
        # The group's first conv reads its input. After pruned convs the input is the value at
        # start (what the pruned conv read then may since have been split from its activation).
        group_input = rewrite.value[start] if start + 1 in rewrite.pruned else first.args[0]
        # Right after the input: a projection shortcut that reads it may come before the body.
        with graph.inserting_after(group_input):
            padded = graph.call_function(F.pad, (group_input, (pad[2], pad[3], pad[0], pad[1])))
        reader = _input_reader(first, group_input, {nodes[r.add_node] for r in chain.residuals})
        if reader is not None:
            reader.replace_input_with(group_input, padded)
        rewrite.padded[start] = padded
        logger.debug("group %d:(%d,%d) pads its input by %s", rewrite.index, start, end, pad)


def _input_reader(first: fx.Node, group_input: fx.Node, adds: set[fx.Node]) -> fx.Node | None:
    """The node on ``first``'s input path that reads the group input, which must read the
    padded input instead: ``first`` itself, or, when the group starts with pruned convs, the
    first of the identities they leave before it (a timm BN+act module emptied of its
    activation, transparent ops such as timm's ``aa``/``se`` ``nn.Identity``); padding only
    ``first`` would leave the pad unused and the kept convs unpadded. None when the path runs
    through a residual add (a body pruned empty): ``align_residuals`` rewires both its sides."""
    node = first
    while group_input not in node.all_input_nodes:
        if node in adds:
            return None
        if len(node.all_input_nodes) != 1:
            raise PlanError(f"cannot follow the input of {first.name!r} to {group_input.name!r}")
        node = node.all_input_nodes[0]
    return None if node in adds else node


def _strip_padding(gm: fx.GraphModule, nodes: dict[str, fx.Node], conv: ConvInfo) -> None:
    """Make a conv pad nothing: a plain nn.Conv2d sharing its parameters, pad node bypassed."""
    old = gm.get_submodule(conv.module)
    new = nn.Conv2d(
        old.in_channels,
        old.out_channels,
        old.kernel_size,
        stride=old.stride,
        padding=0,
        dilation=old.dilation,
        groups=old.groups,
        bias=old.bias is not None,
    )
    new.weight = old.weight
    new.bias = old.bias
    new.train(old.training)
    _set_submodule(gm, conv.module, new)
    if conv.pad_node is not None:
        pad = nodes[conv.pad_node]
        pad.replace_all_uses_with(pad.args[0])
        gm.graph.erase_node(pad)


def _set_submodule(gm: fx.GraphModule, name: str, module: nn.Module) -> None:
    """Replace the submodule at qualified ``name`` by ``module``."""
    parent, _, leaf = name.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, leaf, module)


__all__ = ["move_padding"]
