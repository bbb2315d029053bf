"""Approximate training view of a prepared network: every conv pads as in the original.

Pattern: a multi-conv merge group of a prepared network: one zero ``F.pad`` of the group
input by the group's total padding, unpadded convs inside, and the ``crop_like``/``shift`` that
align the residuals fused in it (``move_padding``, ``align_residuals``).

Rewrite: a copy of the graph, sharing every module, parameter and buffer, in which the group's
pad is bypassed, each of its convs pads its own input as it did before ``prepare``
(``ConvStep.padding``), and the residual crops and shifts take offset 0: the maps inside the
group keep the original sizes, so a training step costs about what the original's costs.

Why it is NOT exact (opt-in, ``finetune(..., borders="approximate")``): the prepared network
(and ``convert``'s merged conv) zero-pads only the group input, so near the borders, within the
group's padding, its outputs differ from this view's, where every intermediate map is
zero-padded and the biases do not leak into the border. Training this view and then merging
the prepared network carries that border error into the merged model; measure it with
:func:`border_error` (and accuracy) before relying on it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from depthfx.algebra import Padding4
from depthfx.passes.align_residuals import crop_like, shift
from depthfx.passes.group_record import PREPARED_ATTR, GroupRecord, PreparedInfo
from depthfx.plans import PlanError


@torch.fx.wrap
def padded_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    padding: Padding4,
) -> torch.Tensor:
    """conv2d of ``x`` zero-padded by ``padding`` (top, bottom, left, right)."""
    top, bottom, left, right = padding
    if top == bottom and left == right:
        return F.conv2d(x, weight, bias, stride, (top, left), dilation, groups)
    return F.conv2d(F.pad(x, (left, right, top, bottom)), weight, bias, stride, 0, dilation, groups)


def original_padding_view(prepared: fx.GraphModule) -> tuple[fx.GraphModule, int]:
    """A GraphModule sharing ``prepared``'s modules in which the convs of every multi-conv
    group pad as in the original; and the number of groups changed (0: ``prepared`` itself)."""
    info = getattr(prepared, PREPARED_ATTR, None)
    if not isinstance(info, PreparedInfo):
        raise PlanError("not a prepared network: prepare() records its groups on it")
    groups = [g for g in info.groups if len(g.convs) > 1]
    if not groups:
        return prepared, 0
    by_module = {n.target: n for n in prepared.graph.nodes if n.op == "call_module"}
    padding = {step.module: step.padding for g in groups for step in g.convs}
    pads = {_group_pad(prepared, by_module, g) for g in groups}
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in prepared.graph.nodes:
        if node in pads:
            env[node] = env[node.args[0]]
        elif node.op == "call_module" and node.target in padding:
            conv = prepared.get_submodule(node.target)
            weight = graph.get_attr(f"{node.target}.weight")
            bias = graph.get_attr(f"{node.target}.bias") if conv.bias is not None else None
            args = (env[node.args[0]], weight, bias, conv.stride, conv.dilation, conv.groups)
            env[node] = graph.call_function(padded_conv, (*args, padding[node.target]))
        elif node.op == "call_function" and node.target is crop_like:
            x, like = (env[a] for a in node.args[:2])
            env[node] = graph.call_function(crop_like, (x, like, 0, 0))
        elif node.op == "call_function" and node.target is shift:
            env[node] = env[node.args[0]]
        else:
            env[node] = graph.node_copy(node, lambda n: env[n])
    return fx.GraphModule(prepared, graph, class_name="OriginalPaddingView"), len(groups)


def border_error(
    prepared: fx.GraphModule, view: nn.Module, inputs: torch.Tensor
) -> tuple[float, float]:
    """(max |prepared − view|, max |prepared|) of the outputs on ``inputs``, in eval mode: the
    error that merging a network trained through ``view`` brings (module docstring)."""
    was = prepared.training
    prepared.eval()
    try:
        with torch.no_grad():
            exact, approx = prepared(inputs), view(inputs)
    finally:
        prepared.train(was)
    return float((exact - approx).abs().max()), float(exact.abs().max())


def _group_pad(gm: fx.GraphModule, by_module: dict[str, fx.Node], group: GroupRecord) -> fx.Node:
    """The ``F.pad`` node ``move_padding`` put on the group input (its first conv reads it)."""
    first = by_module.get(group.convs[0].module)
    node = first.args[0] if first is not None and first.args else None
    if isinstance(node, fx.Node) and node.op == "call_function" and node.target is F.pad:
        return node
    raise PlanError(f"{group.describe()}: its first conv does not read the group's pad")


__all__ = ["border_error", "original_padding_view", "padded_conv"]
