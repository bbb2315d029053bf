"""Training view of a prepared network that skips the constant ring of its enlarged maps.

Pattern: inside a merge group ``prepare`` zero-pads the group input by the whole group's
padding P (``move_padding``), so each map inside the group is enlarged by the padding the rest
of the group still needs. A map position whose receptive field lies entirely in those zeros
holds a per-(sample, channel) constant: the conv biases carried through BN (train or eval
mode), residual adds and the other per-channel affine ops. Those positions form a ring outside
a "live" box; the box grows by one conv's padding per conv, while the map is as large as the
rest of the group needs, so early in a long group most of the map is ring.

Rewrite: a copy of the graph, sharing every module, parameter and buffer of the prepared
network, in which each unpadded ``nn.Conv2d`` whose input has a ring is a :func:`ring_conv`: it
convolves only the input window its live outputs read, computes the ring value once as the
conv of the input's ring constant, and surrounds the live outputs with it. Everything else
(BN with its batch statistics over the whole map, adds, crops) runs on full-size maps as before.

Why it is exact: an output position outside the live box reads only ring positions of its
input, whose value is the constant c; its value is conv(c) = Σ W·c + b, which ``ring_conv``
computes from c read at a ring position. Inside the box it convolves the same input values.
The view computes the prepared network's function (and gradients) up to fp32 summation order,
so training it trains the prepared network, and ``convert`` of that network stays exact. The
live boxes are derived for the planned input size; at any other size the view falls back to
plain convs.
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
from depthfx.plans import PlanError

#: Per spatial axis, the half-open live interval [lo, hi) of a map; outside it: the ring.
Box = tuple[tuple[int, int], tuple[int, int]]

#: Per-channel affine modules (BN in train or eval mode), and the identity of pruned convs.
_CHANNEL_AFFINE = (nn.BatchNorm2d, nn.SyncBatchNorm, nn.Identity)
_ADDS = (operator.add, torch.add, operator.iadd)


@torch.fx.wrap
def ring_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    in_size: tuple[int, int],
    read: Box,
    live: Box,
    ring_at: tuple[int, int],
) -> torch.Tensor:
    """conv2d(x) without padding, computing only the ``live`` outputs (from the input window
    ``read``) and filling the rest with the conv of the input's ring constant (read at
    ``ring_at``)."""
    if tuple(x.shape[2:]) != in_size:  # not the planned size: no box is known
        return F.conv2d(x, weight, bias, stride, 0, dilation, groups)
    (r0, r1), (c0, c1) = read
    (o0, o1), (p0, p1) = live
    h, w = _out_size(in_size, weight.shape[2:], stride, dilation)
    if (o0, o1, p0, p1) == (0, h, 0, w):
        return F.conv2d(x[:, :, r0:r1, c0:c1], weight, bias, stride, 0, dilation, groups)
    span = (dilation[0] * (weight.shape[2] - 1) + 1, dilation[1] * (weight.shape[3] - 1) + 1)
    c = x[:, :, ring_at[0] : ring_at[0] + 1, ring_at[1] : ring_at[1] + 1]
    ring = F.conv2d(c.expand(-1, -1, *span), weight, bias, 1, 0, dilation, groups)
    n, ch = x.shape[0], weight.shape[0]
    if o1 <= o0 or p1 <= p0:  # every output reads only the ring
        out = ring.expand(n, ch, h, w).contiguous()
    else:
        inner = F.conv2d(x[:, :, r0:r1, c0:c1], weight, bias, stride, 0, dilation, groups)
        middle = [ring.expand(n, ch, o1 - o0, p0), inner, ring.expand(n, ch, o1 - o0, w - p1)]
        rows = [ring.expand(n, ch, o0, w), torch.cat(middle, 3), ring.expand(n, ch, h - o1, w)]
        out = torch.cat(rows, 2)
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def ring_view(prepared: fx.GraphModule) -> tuple[fx.GraphModule, int]:
    """A GraphModule computing ``prepared``'s function with ring-skipping convs, sharing its
    modules; and the number of convs it rewrote (0: the view is ``prepared`` itself)."""
    info = getattr(prepared, PREPARED_ATTR, None)
    if not isinstance(info, PreparedInfo):
        raise PlanError("not a prepared network: prepare() records its groups on it")
    boxes = live_boxes(prepared, info.example_shapes)
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    rewritten = 0
    for node in prepared.graph.nodes:
        conv = _unpadded_conv(prepared, node)
        src = node.args[0] if conv is not None else None
        if conv is None or boxes.get(src) is None:
            env[node] = graph.node_copy(node, lambda n: env[n])
            continue
        in_size = tuple(src.meta["tensor_meta"].shape[2:])
        read, live = conv_window(boxes[src], in_size, conv)
        weight = graph.get_attr(f"{node.target}.weight")
        bias = graph.get_attr(f"{node.target}.bias") if conv.bias is not None else None
        args = (env[src], weight, bias, conv.stride, conv.dilation, conv.groups, in_size, read)
        env[node] = graph.call_function(
            ring_conv, (*args, live, _ring_position(boxes[src], in_size))
        )
        env[node].meta = dict(node.meta)
        rewritten += 1
    if rewritten == 0:
        return prepared, 0
    view = fx.GraphModule(prepared, graph, class_name="RingView")
    return view, rewritten


def live_boxes(gm: fx.GraphModule, example_shapes: Sequence[Sequence[int]]) -> dict[fx.Node, Box]:
    """The live box of every map of ``gm`` that has a ring (shapes from ``example_shapes``).

    Zero ``F.pad`` starts a box (the unpadded map); unpadded convs shrink it to the outputs
    that read it, BN keeps it, ``crop_like``/``shift`` move it, adds take the boxes' hull.
    Any other op, or a full box, ends it."""
    modes = {m: m.training for m in gm.modules()}
    gm.eval()  # no BN running-statistics update
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(*(torch.zeros(tuple(s)) for s in example_shapes))
    finally:
        for module, training in modes.items():
            module.training = training
    boxes: dict[fx.Node, Box] = {}
    for node in gm.graph.nodes:
        box = _box_of(gm, node, boxes)
        if box is not None and box != _full(node):
            boxes[node] = box
    return boxes


def conv_window(box: Box, in_size: tuple[int, int], conv: nn.Conv2d) -> tuple[Box, Box]:
    """(input window read, live output box) of an unpadded conv on a map with ``box``."""
    read, live = [], []
    for axis in range(2):
        lo, hi = box[axis]
        s, d, k = conv.stride[axis], conv.dilation[axis], conv.kernel_size[axis]
        span = d * (k - 1) + 1
        out = (in_size[axis] - span) // s + 1
        o0 = max(0, -(-(lo - span + 1) // s))  # first output whose window reaches lo
        o1 = min(out, (hi - 1) // s + 1)  # one past the last output whose window starts < hi
        o1 = max(o1, o0)
        live.append((o0, o1))
        read.append((o0 * s, (o1 - 1) * s + span if o1 > o0 else o0 * s))
    return (read[0], read[1]), (live[0], live[1])


def _box_of(gm: fx.GraphModule, node: fx.Node, boxes: dict[fx.Node, Box]) -> Box | None:
    """The live box of ``node``'s output, or None when it has no (known) ring."""
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape") or len(meta.shape) != 4:
        return None
    if node.op == "call_function" and node.target is F.pad:
        return _pad_box(node)
    if node.op == "call_function" and node.target in (crop_like, shift):
        src = boxes.get(node.args[0])
        top, left = node.args[-2], node.args[-1]
        return None if src is None else _moved(src, top, left, tuple(meta.shape[2:]))
    if node.op == "call_function" and node.target in _ADDS:
        tensors = [a for a in node.args if isinstance(a, fx.Node)]
        if len(tensors) != 2 or any(a not in boxes for a in tensors):
            return None
        if any(tuple(a.meta["tensor_meta"].shape) != tuple(meta.shape) for a in tensors):
            return None
        a, b = (boxes[t] for t in tensors)
        return tuple((min(a[i][0], b[i][0]), max(a[i][1], b[i][1])) for i in range(2))
    if node.op != "call_module":
        return None
    module = gm.get_submodule(node.target)
    src = boxes.get(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
    if src is None:
        return None
    if isinstance(module, _CHANNEL_AFFINE):
        return src
    conv = _unpadded_conv(gm, node)
    if conv is not None:
        in_size = tuple(node.args[0].meta["tensor_meta"].shape[2:])
        return conv_window(src, in_size, conv)[1]
    return None


def _pad_box(node: fx.Node) -> Box | None:
    pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
    mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
    value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value")
    if mode != "constant" or value not in (None, 0, 0.0) or len(pad) != 4 or min(pad) < 0:
        return None
    h, w = node.args[0].meta["tensor_meta"].shape[2:]
    left, _, top, _ = pad
    return ((top, top + h), (left, left + w))


def _moved(box: Box, top: int, left: int, size: tuple[int, int]) -> Box:
    """The box after dropping ``top`` rows and ``left`` columns, clipped to ``size``."""
    (r0, r1), (c0, c1) = box
    rows = (min(max(r0 - top, 0), size[0]), min(max(r1 - top, 0), size[0]))
    cols = (min(max(c0 - left, 0), size[1]), min(max(c1 - left, 0), size[1]))
    return rows, cols


def _full(node: fx.Node) -> Box:
    h, w = node.meta["tensor_meta"].shape[2:]
    return ((0, h), (0, w))


def _unpadded_conv(gm: fx.GraphModule, node: fx.Node) -> nn.Conv2d | None:
    """The module of a call to a plain zero-padding-free ``nn.Conv2d`` (as ``prepare`` leaves
    inside groups), else None."""
    if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
        return None
    module = gm.get_submodule(node.target)
    if type(module) is not nn.Conv2d or module.padding not in ((0, 0), 0, "valid"):
        return None
    return module


def _out_size(
    size: tuple[int, int], kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int]
) -> tuple[int, int]:
    h = (size[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    w = (size[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    return h, w


def _ring_position(box: Box, size: tuple[int, int]) -> tuple[int, int]:
    """A position outside ``box`` (one exists: full boxes are not recorded)."""
    (r0, r1), (c0, c1) = box
    if r0 > 0 or c0 > 0:
        return 0, 0
    return (r1, 0) if r1 < size[0] else (0, c1)


__all__ = ["Box", "conv_window", "live_boxes", "ring_conv", "ring_view"]
