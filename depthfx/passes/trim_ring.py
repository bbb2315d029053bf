"""Training view of a prepared network that skips the constant ring of its enlarged maps.

Pattern: inside a merge group ``prepare`` zero-pads the group input by the whole group's padding
P (``move_padding``), so each map inside the group is enlarged by the padding the rest of the
group still needs. A map position whose receptive field lies entirely in those zeros holds a
per-channel constant, the same for every sample: the conv biases carried through BN (train or
eval mode), residual adds and crops. Those positions form a ring around a "live" box; the box
grows by one conv's padding per conv while the map is as large as the rest of the group needs,
so early in a long group most of the map is ring.

Rewrite: a copy of the graph, sharing every module, parameter and buffer of the prepared
network, in which each map from a group's pad on is a ring map (:mod:`depthfx.passes.ring_ops`:
the ring constant and, as a tensor over the live box, the map minus it): unpadded
``nn.Conv2d`` convolve only the window their live outputs read (the ring: the conv of a
constant patch), ``nn.BatchNorm2d`` takes its batch statistics over the live box and the ring
(counted, not materialised), adds and ``crop_like``/``shift`` move and join boxes. Any other op
gets the full map (``fill``); at a group's end the box covers the map and the view continues
as the prepared network.

Why it is exact: an output position outside the live box reads only ring positions of its
input, whose value is the constant c, so its value is conv(c); inside it, conv is linear, so
conv(c + d) = conv(c) + conv(d) with d zero-padded. BN's statistics over the map are those of
the box joined to those of the ring, its gradient the standard one split the same way. The
view computes the
prepared network's function, gradients and BN running statistics up to fp32 summation order,
so training it trains the prepared network, and ``convert`` of that network stays exact. The
boxes are derived for the planned input size; at any other size the view runs the prepared
network itself.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from depthfx.passes.align_residuals import crop_like, shift
from depthfx.passes.group_record import PREPARED_ATTR, PreparedInfo
from depthfx.passes.ring_ops import (
    Box,
    RingBatchNorm,
    fill,
    ring_add,
    ring_conv,
    window_delta,
    zero_ring,
)
from depthfx.plans import PlanError

_ADDS = (operator.add, torch.add)


class RingView(nn.Module):
    """Runs the ring-map graph on inputs of the planned shape (any batch size), the prepared
    network itself on any other: the boxes are only known for the planned size."""

    def __init__(
        self,
        graph_module: fx.GraphModule,
        prepared: fx.GraphModule,
        shapes: Sequence[Sequence[int]],
    ) -> None:
        super().__init__()
        self.graph_module, self.prepared = graph_module, prepared
        self.shapes = tuple(tuple(s[1:]) for s in shapes)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        planned = len(inputs) == len(self.shapes) and all(
            tuple(x.shape[1:]) == s for x, s in zip(inputs, self.shapes, strict=True)
        )
        return (self.graph_module if planned else self.prepared)(*inputs)


class _RingView:
    """Builds the view's graph: the ring map (delta node, constant node, box) of each
    original node that has one, the full map of every other."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm, self.graph = gm, fx.Graph()
        self.full: dict[fx.Node, fx.Node] = {}
        self.ring: dict[fx.Node, tuple[fx.Node, fx.Node, Box]] = {}
        self.modules: dict[str, nn.Module] = {}
        self.rewritten = 0

    def tensor(self, node: fx.Node) -> fx.Node:
        """The full map of ``node`` in the new graph (filled from its ring map once)."""
        if node not in self.full:
            delta, const, box = self.ring[node]
            self.full[node] = self.graph.call_function(fill, (delta, const, box, _whole(node)))
        return self.full[node]

    def set_ring(self, node: fx.Node, delta: fx.Node, const: fx.Node, box: Box) -> None:
        if box == _whole(node):
            self.full[node] = self.graph.call_function(fill, (delta, const, box, box))
        else:
            self.ring[node] = (delta, const, box)

    def pair(self, call: fx.Node) -> tuple[fx.Node, fx.Node]:
        return (self.graph.call_function(operator.getitem, (call, 0)),
                self.graph.call_function(operator.getitem, (call, 1)))  # fmt: skip

    def visit(self, node: fx.Node) -> None:
        graph = self.graph
        args = [a for a in node.args if isinstance(a, fx.Node)]
        src = args[0] if args else None
        is_pad = node.op == "call_function" and node.target is F.pad
        if is_pad and (box := _zero_pad(node)) is not None:
            delta = self.tensor(src)
            self.set_ring(node, delta, graph.call_function(zero_ring, (delta,)), box)
            return
        if src in self.ring and self._visit_ring(node, src, args):
            return
        self.full[node] = graph.node_copy(node, self.tensor)

    def _visit_ring(self, node: fx.Node, src: fx.Node, args: list[fx.Node]) -> bool:
        """Give ``node`` a ring map from its ring-map input, if it is an op of the view."""
        graph, (delta, const, box) = self.graph, self.ring[src]
        if node.op == "call_module":
            module = self.gm.get_submodule(node.target)
            if type(module) is nn.Identity:
                self.set_ring(node, delta, const, box)
                return True
            if type(module) is nn.BatchNorm2d and len(node.args) == 1:
                name = f"depthfx_ring_bn_{len(self.modules)}"
                self.modules[name] = RingBatchNorm(module)
                h, w = _whole(node)[0][1], _whole(node)[1][1]
                ring = h * w - (box[0][1] - box[0][0]) * (box[1][1] - box[1][0])
                out = graph.call_module(name, (delta, const, ring))
                self.set_ring(node, *self.pair(out), box)
                return True
            if (conv := _unpadded_conv(self.gm, node)) is not None:
                read, out_box = conv_window(box, _whole(src), conv)
                weight = graph.get_attr(f"{node.target}.weight")
                bias = graph.get_attr(f"{node.target}.bias") if conv.bias is not None else None
                params = (weight, bias, conv.stride, conv.dilation, conv.groups)
                out = graph.call_function(ring_conv, (delta, const, *params, box, read))
                self.set_ring(node, *self.pair(out), out_box)
                self.rewritten += 1
                return True
            return False
        if node.op != "call_function":
            return False
        if node.target in (crop_like, shift):
            top, left = node.args[-2], node.args[-1]
            new_box, window = _cropped(box, top, left, _whole(node))
            delta = graph.call_function(window_delta, (delta, box, window))
            self.set_ring(node, delta, const, new_box)
            return True
        if node.target in _ADDS and len(args) == 2 and len(node.args) == 2 and not node.kwargs:
            other = args[1]
            if (
                other not in self.ring
                or _whole(other) != _whole(node)
                or _whole(src) != _whole(node)
            ):
                return False
            b_delta, b_const, b_box = self.ring[other]
            hull = tuple(
                (min(box[i][0], b_box[i][0]), max(box[i][1], b_box[i][1])) for i in range(2)
            )
            out = graph.call_function(ring_add, (delta, const, box, b_delta, b_const, b_box, hull))
            self.set_ring(node, *self.pair(out), hull)
            return True
        return False


def ring_view(prepared: fx.GraphModule) -> tuple[nn.Module, int]:
    """A GraphModule computing ``prepared``'s function on ring maps inside its groups, sharing
    its modules; and the number of convs it rewrote (0: the view is ``prepared`` itself)."""
    info = getattr(prepared, PREPARED_ATTR, None)
    if not isinstance(info, PreparedInfo):
        raise PlanError("not a prepared network: prepare() records its groups on it")
    _propagate_shapes(prepared, info.example_shapes)
    builder = _RingView(prepared)
    for node in prepared.graph.nodes:
        builder.visit(node)
    if builder.rewritten == 0:
        return prepared, 0
    builder.graph.lint()
    root = nn.Module()
    for name in {
        n.target.split(".")[0] for n in builder.graph.nodes if n.op in ("call_module", "get_attr")
    } - set(builder.modules):
        setattr(root, name, getattr(prepared, name))
    for name, module in builder.modules.items():
        setattr(root, name, module)
    graph_module = fx.GraphModule(root, builder.graph, class_name="RingGraph")
    return RingView(graph_module, prepared, info.example_shapes), builder.rewritten


def conv_window(box: Box, size: Box, conv: nn.Conv2d) -> tuple[Box, Box]:
    """(input window read, live output box) of an unpadded conv on a map of ``size`` (as a
    box) with live ``box``: the outputs whose window meets the box (at least one)."""
    read, live = [], []
    for axis in range(2):
        lo, hi = box[axis]
        s, d, k = conv.stride[axis], conv.dilation[axis], conv.kernel_size[axis]
        span = d * (k - 1) + 1
        out = (size[axis][1] - span) // s + 1
        o0 = min(max(0, -(-(lo - span + 1) // s)), out - 1)  # first output reaching lo
        o1 = max(min(out, (hi - 1) // s + 1), o0 + 1)  # past the last one starting before hi
        live.append((o0, o1))
        read.append((o0 * s, (o1 - 1) * s + span))
    return (read[0], read[1]), (live[0], live[1])


def _propagate_shapes(gm: fx.GraphModule, example_shapes: Sequence[Sequence[int]]) -> None:
    """Every node's ``tensor_meta`` at the planned shapes (eval mode: no BN update)."""
    param = next(iter(gm.parameters()), None)
    like = {} if param is None else {"dtype": param.dtype, "device": param.device}
    modes = {m: m.training for m in gm.modules()}
    gm.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(*(torch.zeros(tuple(s), **like) for s in example_shapes))
    finally:
        for module, training in modes.items():
            module.training = training


def _zero_pad(node: fx.Node) -> Box | None:
    """The box of the input inside a zero ``F.pad`` of a 4-d map (None: another pad)."""
    pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
    mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
    value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value")
    meta = node.args[0].meta.get("tensor_meta") if isinstance(node.args[0], fx.Node) else None
    if meta is None or len(meta.shape) != 4 or mode != "constant" or value not in (None, 0, 0.0):
        return None
    if len(pad) != 4 or min(pad) < 0 or max(pad) == 0:
        return None
    h, w = meta.shape[2:]
    left, _, top, _ = pad
    return ((top, top + h), (left, left + w))


def _cropped(box: Box, top: int, left: int, size: Box) -> tuple[Box, Box]:
    """(box, source window) of a crop that drops ``top`` rows and ``left`` columns to
    ``size``: the box clipped to it (a 1×1 one of ring if nothing is left)."""
    new = []
    for (lo, hi), offset, (_, extent) in zip(box, (top, left), size, strict=True):
        new.append((min(max(lo - offset, 0), extent), min(max(hi - offset, 0), extent)))
    if any(hi <= lo for lo, hi in new):
        new = [(0, 1), (0, 1)]
    window = tuple((lo + off, hi + off) for (lo, hi), off in zip(new, (top, left), strict=True))
    return (new[0], new[1]), window


def _whole(node: fx.Node) -> Box:
    h, w = node.meta["tensor_meta"].shape[2:]
    return ((0, h), (0, w))


def _unpadded_conv(gm: fx.GraphModule, node: fx.Node) -> nn.Conv2d | None:
    """The module of a call to a plain ``nn.Conv2d`` that pads nothing (as ``prepare`` leaves
    inside groups), else None."""
    if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
        return None
    module = gm.get_submodule(node.target)
    if type(module) is not nn.Conv2d or module.padding not in ((0, 0), "valid"):
        return None
    return module


__all__ = ["RingView", "conv_window", "ring_view"]
