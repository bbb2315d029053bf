"""prepare: turn a model and a Plan into the trainable network that ``convert`` merges exactly.

Pattern → rewrite → why, per chain of the plan:

* **Activation removal.** An activation slot at a position not in A is bypassed (its call
  site, not its module: one ``nn.ReLU`` may serve several sites). timm BN+act modules get their
  ``act`` split out into an explicit call first, so every kept activation is a node of its own.
* **Activation insertion.** A position in A that is linear in the original gets a fresh
  activation of the chain's own type, after the residual add when there is one (spec §1.2).
* **Padding move** (spec §5.1, generalised per side, per axis and through strides). A merge
  group (i, j) of several convs zero-pads only its input, by P = Σ_k (Π_{m<k} s_m)·p_k; every
  conv inside pads nothing. Without this the merged conv differs at the borders, because the
  original zero-pads every intermediate map and biases leak into those pads.
* **Residual alignment** (spec §5.1 item 5). A residual fused inside a group sees maps with
  extra border: its identity (or projection input) is taken from the padded group input when
  the body starts the group, shifted by the body's own padding and cropped to the body's output,
  which is exactly where ``convert`` puts the identity tap.

The result is an ordinary ``fx.GraphModule``: BN, dropout and stochastic depth keep their
train/eval behaviour, the surviving modules keep their ``state_dict`` keys, and the groups it
prepared are recorded on it for ``convert``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from depthfx.algebra import group_padding
from depthfx.passes.analyze import analyze
from depthfx.plans import ChainPlan, Plan, PlanError
from depthfx.records import Analysis, Chain, ConvInfo

logger = logging.getLogger(__name__)

Padding = tuple[int, int, int, int]  # top, bottom, left, right

PREPARED_ATTR = "depthfx_prepared"


@torch.fx.wrap
def crop_like(x: torch.Tensor, like: torch.Tensor, top: int, left: int) -> torch.Tensor:
    """x[..., top:top+H, left:left+W] with (H, W) the spatial size of ``like``."""
    return x[:, :, top : top + like.shape[2], left : left + like.shape[3]]


@torch.fx.wrap
def shift(x: torch.Tensor, top: int, left: int) -> torch.Tensor:
    """Drop the first ``top`` rows and ``left`` columns (aligns a projection shortcut)."""
    return x[:, :, top:, left:]


@dataclass(frozen=True)
class ConvStep:
    """One conv of a group: its module, its padding before the move, and the BN after it
    (a module — plain or timm BN+act — or an ``F.batch_norm`` with ``get_attr`` statistics)."""

    module: str
    padding: Padding
    bn: str | None = None
    bn_kind: str | None = None
    bn_attrs: tuple[str | None, ...] | None = None
    bn_eps: float | None = None

    @classmethod
    def of(cls, conv: ConvInfo) -> ConvStep:
        return cls(conv.module, conv.padding, conv.bn, conv.bn_kind, conv.bn_attrs, conv.bn_eps)


@dataclass(frozen=True)
class ResidualStep:
    """A residual fused inside a group: body = the group's convs src+1 … dst."""

    src: int
    dst: int
    kind: str
    shortcut: ConvStep | None


@dataclass(frozen=True)
class GroupRecord:
    """What ``convert`` needs to replace one merge group by one conv."""

    chain: int
    start: int
    end: int
    input: str
    output: str
    pad: Padding
    convs: tuple[ConvStep, ...]
    residuals: tuple[ResidualStep, ...]

    @property
    def name(self) -> str:
        """Prefix of the merged modules ``convert`` registers for this group."""
        return f"depthfx_merged_{self.chain}_{self.start}_{self.end}"

    def describe(self) -> str:
        first, last = self.convs[0].module, self.convs[-1].module
        return f"group {self.start}->{self.end} of chain {self.chain} ({first} … {last})"


@dataclass(frozen=True)
class PreparedInfo:
    """Attached to a prepared GraphModule as ``depthfx_prepared``."""

    plan: Plan
    groups: tuple[GroupRecord, ...]
    example_shapes: tuple[tuple[int, ...], ...]


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


def rewrite_chain(
    gm: fx.GraphModule,
    nodes: dict[str, fx.Node],
    index: int,
    chain: Chain,
    cplan: ChainPlan,
) -> list[GroupRecord]:
    graph = gm.graph
    keep = set(cplan.act_pos)

    # Linear value of each position (after BN and residual add, before its activation) and the
    # value the next conv reads (after the activation). Recorded before anything changes.
    linear: dict[int, fx.Node] = {0: nodes[chain.input_node]}
    value = {0: linear[0]}
    for p in range(1, chain.num_convs + 1):
        slot = chain.activations.get(p)
        if slot is None:
            linear[p] = nodes[chain.position_nodes[p]]
            value[p] = (
                _insert_activation(gm, linear[p], chain, index, p) if p in keep else linear[p]
            )
        elif slot.kind == "norm_act":
            linear[p] = nodes[slot.node]
            value[p] = _split_norm_act(gm, linear[p], slot.module, keep=p in keep)
        else:
            act = nodes[slot.node]
            linear[p] = _activation_input(act)
            value[p] = act
            if p not in keep:
                act.replace_all_uses_with(linear[p])
                graph.erase_node(act)
                value[p] = linear[p]

    residual_of = {r.dst: r for r in chain.residuals}
    records = []
    for start, end in cplan.groups():
        convs = chain.convs[start:end]
        fused = [r for r in chain.residuals if start <= r.src and r.dst <= end]
        records.append(
            _prepare_group(gm, nodes, index, chain, start, end, convs, fused, linear, value)
        )
        # A kept residual ending here: the group's output is the body, not the add.
        kept = residual_of.get(end)
        if kept is not None and kept.src < start:
            add = nodes[kept.add_node]
            body = _body_arg(add, kept, nodes, chain, value)
            records[-1] = _replace_output(records[-1], body.name)
    return records


def _replace_output(record: GroupRecord, output: str) -> GroupRecord:
    return GroupRecord(
        record.chain,
        record.start,
        record.end,
        record.input,
        output,
        record.pad,
        record.convs,
        record.residuals,
    )


def _prepare_group(
    gm: fx.GraphModule,
    nodes: dict[str, fx.Node],
    index: int,
    chain: Chain,
    start: int,
    end: int,
    convs: Sequence[ConvInfo],
    fused: Sequence,
    linear: dict[int, fx.Node],
    value: dict[int, fx.Node],
) -> GroupRecord:
    graph = gm.graph
    pad = group_padding(convs)
    steps = tuple(ConvStep.of(c) for c in convs)
    residual_steps = tuple(
        ResidualStep(r.src, r.dst, r.kind, None if r.shortcut is None else ConvStep.of(r.shortcut))
        for r in fused
    )
    record = GroupRecord(
        index, start, end, value[start].name, linear[end].name, pad, steps, residual_steps
    )
    for conv in convs:
        if conv.padding_mode != "zeros" and len(convs) > 1:
            raise PlanError(
                f"conv {conv.module!r} pads with mode {conv.padding_mode!r}: it cannot be merged "
                "with other convs (moving its padding would change the function)"
            )
    if len(convs) == 1:
        return record

    # Move every conv's padding to one explicit pad of the group input.
    for conv in convs:
        _strip_padding(gm, nodes, conv)
    first = nodes[convs[0].node]
    group_input = first.args[0]
    # Right after the input: a projection shortcut that reads it may come before the body.
    with graph.inserting_after(group_input):
        padded = graph.call_function(F.pad, (group_input, (pad[2], pad[3], pad[0], pad[1])))
    first.replace_input_with(group_input, padded)

    for residual in fused:
        body_pad = group_padding(chain.convs[residual.src : residual.dst])
        source = padded if residual.src == start else value[residual.src]
        add = nodes[residual.add_node]
        body = _body_arg(add, residual, nodes, chain, value)
        if residual.kind == "identity":
            identity = next(a for a in add.args if isinstance(a, fx.Node) and a is not body)
            with graph.inserting_before(add):
                cropped = graph.call_function(crop_like, (source, body, body_pad[0], body_pad[2]))
            add.replace_input_with(identity, cropped)
        else:
            shortcut_conv = nodes[residual.shortcut.node]
            shortcut_out = next(a for a in add.args if isinstance(a, fx.Node) and a is not body)
            with graph.inserting_before(shortcut_conv):
                shifted = graph.call_function(shift, (source, body_pad[0], body_pad[2]))
            shortcut_conv.replace_input_with(shortcut_conv.args[0], shifted)
            with graph.inserting_before(add):
                cropped = graph.call_function(crop_like, (shortcut_out, body, 0, 0))
            add.replace_input_with(shortcut_out, cropped)
    logger.debug("group %d:(%d,%d) pads its input by %s", index, start, end, pad)
    return record


def _body_arg(
    add: fx.Node,
    residual,
    nodes: dict[str, fx.Node],
    chain: Chain,
    value: dict[int, fx.Node],
) -> fx.Node:
    """The argument of a residual add that comes from the residual body."""
    tensors = [a for a in add.args if isinstance(a, fx.Node)]
    if residual.kind == "identity":
        others = [a for a in tensors if a is not value[residual.src]]
    else:
        short = residual.shortcut
        ends = {short.node} | ({short.bn_node} if short.bn_node else set())
        others = [a for a in tensors if a.name not in ends]
    if len(others) != 1:
        raise PlanError(f"cannot tell the body from the shortcut at {add.name!r}")
    return others[0]


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
    parent, _, leaf = name.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, leaf, module)


def _activation_input(node: fx.Node) -> fx.Node:
    arg = node.args[0] if node.args else node.kwargs.get("input")
    if not isinstance(arg, fx.Node):
        raise PlanError(f"activation {node.name!r} has no tensor input")
    return arg


def _split_norm_act(
    gm: fx.GraphModule, node: fx.Node, act_module: str | None, *, keep: bool
) -> fx.Node:
    """A timm BN+act call: drop its activation, or move it into an explicit call after it.

    ``act_module`` is the qualified name of the BN+act module's ``act``. Returns the node that
    holds the position's value after its activation.
    """
    if act_module is None:
        raise PlanError(f"BN+act node {node.name!r} names no activation module")
    parent, _, attr = act_module.rpartition(".")
    norm = gm.get_submodule(parent)
    act = getattr(norm, attr)
    setattr(norm, attr, nn.Identity())
    if not keep:
        return node
    return _call_after(gm, node, act_module.replace(".", "_"), act)


def _insert_activation(
    gm: fx.GraphModule, node: fx.Node, chain: Chain, index: int, position: int
) -> fx.Node:
    """Insert a fresh activation of the chain's type after ``node``; returns the new node."""
    template = chain.activation_for(position)
    if template is None:
        raise PlanError(
            f"the plan activates position {position} of a chain that has no activation to copy"
        )
    return _call_after(gm, node, f"depthfx_act_{index}_{position}", template.make())


def _call_after(gm: fx.GraphModule, node: fx.Node, name: str, module: nn.Module) -> fx.Node:
    """Register ``module`` as ``name`` and call it on ``node``; every other user of ``node``
    now reads the call's result instead."""
    gm.add_submodule(name, module)
    with gm.graph.inserting_after(node):
        call = gm.graph.call_module(name, (node,))
    node.replace_all_uses_with(call, delete_user_cb=lambda user: user is not call)
    return call


__all__ = ["GroupRecord", "PreparedInfo", "crop_like", "group_padding", "prepare", "shift"]
