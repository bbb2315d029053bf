"""The affine conv map of a group input X for every node of a dynamo graph that is one.

Starting at X, a node gets a map (in float64) when it is an exact affine conv map of X: zero
``pad`` of X, ``conv2d``, eval ``batch_norm``, spatial crops (``getitem``) and ``add``/``iadd``
of two maps (residuals). Activations, pooling and anything else end it. Convs and BN go through
the shared algebra (``from_tensors``, ``compose``, ``fold_bn_tensors``) and a sum of two maps
through its shortcut rule (``fuse_projection``): the rules ``convert`` merges with.

Why a map here is an AffineConv *plus an offset*: dynamo graphs have static shapes, and the
group input is often the padded tensor itself, so a crop of it (prepare's residual alignment)
reads X from row a > 0 on, a negative top padding, which an AffineConv cannot hold. The offset
is that signed top/left padding; the bottom/right extent follows from the node's own size.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx

from depthfx.algebra import AffineConv, compose, fold_bn_tensors, from_tensors, fuse_projection

_CONV = (torch.conv2d,)
_ADD = (operator.add, operator.iadd, torch.add)
_BN_ARGS = ("running_mean", "running_var", "weight", "bias")
#: ``F.pad`` as written, and the builtin dynamo records when it traces ``nn.ZeroPad2d``.
_PAD = (F.pad, torch._C._nn.pad)


class NotAffine(Exception):
    """This node (or group) is not an exact affine conv map of the group input."""


@dataclass(frozen=True)
class AffineMap:
    """y[o, p] = b[o] + Σ W[o, i, u] · X[i, s·p + u − offset], X zero outside its extent."""

    conv: AffineConv  # padding always (0, 0, 0, 0): the offset plays its role
    offset: tuple[int, int]

    def is_identity(self) -> bool:
        c = self.conv
        return (
            c.stride == (1, 1)
            and c.kernel_size == (1, 1)
            and c.groups == c.out_channels == c.in_channels
            and bool((c.weight == 1).all())
            and not bool(c.bias.any())
        )


def is_conv(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in _CONV


def call_arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    """Argument ``index`` of a call, passed positionally or as keyword ``name``."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def spatial_size(node: fx.Node) -> tuple[int, int]:
    """(H, W) of a node's 4-d example value; NotAffine when it has none or it is dynamic."""
    value = node.meta.get("example_value")
    if not isinstance(value, Tensor) or value.dim() != 4:
        raise NotAffine(f"{node.name!r} is not a 4-d tensor")
    h, w = value.shape[-2:]
    if not isinstance(h, int) or not isinstance(w, int):
        raise NotAffine(f"{node.name!r} has a dynamic spatial size")
    return h, w


def is_zero_pad(node: Any) -> bool:
    return (
        isinstance(node, fx.Node)
        and node.op == "call_function"
        and node.target in _PAD
        and call_arg(node, 2, "mode", "constant") == "constant"
        and call_arg(node, 3, "value") in (None, 0, 0.0)
    )


def propagate(
    gm: fx.GraphModule,
    values: dict[fx.Node, Any],
    source: fx.Node,
    forbidden: set[fx.Node],
) -> dict[fx.Node, AffineMap]:
    """The affine map of ``source`` of every node that is one (in topological order)."""
    channels = source.meta["example_value"].shape[1]
    identity = AffineConv(
        torch.ones(channels, 1, 1, 1, dtype=torch.float64),
        torch.zeros(channels, dtype=torch.float64),
        groups=channels,
    )
    maps = {source: AffineMap(identity, (0, 0))}
    size = spatial_size(source)
    started = False
    for node in gm.graph.nodes:
        if node is source:
            started = True
            continue
        if not started or node.op != "call_function":
            continue
        if is_conv(node) and (node in forbidden or node.meta.get("depthfx_merged")):
            continue
        try:
            result = _map_of(gm, values, node, maps, size)
        except NotAffine:
            continue
        if result is not None:
            maps[node] = result
    return maps


def _map_of(
    gm: fx.GraphModule,
    values: dict[fx.Node, Any],
    node: fx.Node,
    maps: dict[fx.Node, AffineMap],
    size: tuple[int, int],
) -> AffineMap | None:
    """The map of ``node`` if it is an exact affine map of the source, else None."""
    first = call_arg(node, 0, "input")
    if first not in maps:
        return None
    m = maps[first]
    if is_zero_pad(node):
        pads = list(call_arg(node, 1, "pad"))
        if len(pads) > 4:
            return None
        pads += [0] * (4 - len(pads))
        return _pad(m, (pads[2], pads[3], pads[0], pads[1]), spatial_size(first), size)
    if node.target is operator.getitem:
        return _crop(m, node.args[1], spatial_size(first))
    if is_conv(node):
        weight = _tensor(gm, values, call_arg(node, 1, "weight"))
        bias = call_arg(node, 2, "bias")
        affine = from_tensors(
            weight,
            None if bias is None else _tensor(gm, values, bias),
            call_arg(node, 3, "stride", 1),
            call_arg(node, 4, "padding", 0),
            call_arg(node, 5, "dilation", 1),
            call_arg(node, 6, "groups", 1),
        )
        if any(affine.padding):
            m = _pad(m, affine.padding, spatial_size(first), size)
        return AffineMap(compose(m.conv, replace(affine, padding=(0, 0, 0, 0))), m.offset)
    if node.target is F.batch_norm:
        if call_arg(node, 5, "training", False):
            return None
        stats = [call_arg(node, k, name) for k, name in enumerate(_BN_ARGS, start=1)]
        mean, var, weight, bias = (None if s is None else _tensor(gm, values, s) for s in stats)
        if mean is None or var is None:
            return None
        eps = float(call_arg(node, 7, "eps", 1e-5))
        return AffineMap(fold_bn_tensors(m.conv, mean, var, weight, bias, eps=eps), m.offset)
    if node.target in _ADD:
        if node.kwargs.get("alpha", 1) != 1 or len(node.args) != 2 or node.args[1] not in maps:
            return None
        if node.target is operator.iadd and len(first.users) != 1:
            return None
        return _add(m, maps[node.args[1]])
    return None


def _tensor(gm: fx.GraphModule, values: dict[fx.Node, Any], node: Any) -> Tensor:
    """The real value of a parameter/buffer input or a constant attribute."""
    if (
        isinstance(node, fx.Node)
        and node.op == "placeholder"
        and isinstance(values.get(node), Tensor)
    ):
        return values[node]
    if isinstance(node, fx.Node) and node.op == "get_attr":
        return operator.attrgetter(node.target)(gm)
    raise NotAffine(f"{node} is not a parameter or buffer")


def _pad(
    m: AffineMap, pads: tuple[int, int, int, int], in_size: tuple[int, int], size: tuple[int, int]
) -> AffineMap:
    """Zero padding (t, b, l, r; negative crops) of a map: exact only for a window of X that
    already reaches X's border on each side it pads, where the new zeros are X's own zeros."""
    top, bottom, left, right = pads
    if any(p > 0 for p in pads) and not m.is_identity():
        raise NotAffine("zero padding of an intermediate map (padding not moved)")
    (oh, ow), (h, w), (height, width) = m.offset, in_size, size
    if (top > 0 and oh < 0) or (left > 0 and ow < 0):
        raise NotAffine("zero padding inside the input's extent")
    if (bottom > 0 and h - oh < height) or (right > 0 and w - ow < width):
        raise NotAffine("zero padding inside the input's extent")
    return AffineMap(m.conv, (oh + top, ow + left))


def _crop(m: AffineMap, index: Any, in_size: tuple[int, int]) -> AffineMap:
    """x[:, :, a:b, c:d]: the same map read from row a, column c on."""
    index = index if isinstance(index, tuple) else (index,)
    if index and index[0] is Ellipsis:
        index = (slice(None),) * (5 - len(index)) + index[1:]
    if len(index) > 4 or not all(isinstance(i, slice) for i in index):
        raise NotAffine("not a spatial crop")
    index = index + (slice(None),) * (4 - len(index))
    if index[0] != slice(None) or index[1] != slice(None):
        raise NotAffine("indexes batch or channels")
    starts = []
    for axis, size in zip(index[2:], in_size, strict=True):
        start, _stop, step = axis.indices(size)
        if step != 1:
            raise NotAffine("strided crop")
        starts.append(start)
    (sh, sw), (oh, ow) = m.conv.stride, m.offset
    return AffineMap(m.conv, (oh - sh * starts[0], ow - sw * starts[1]))


def _add(a: AffineMap, b: AffineMap) -> AffineMap:
    """a + b (the sizes agree: the graph adds them) by the shared shortcut rule.

    ``a``'s kernel is grown with zeros to the union of both kernels at their common offset.
    Seen from ``b``, the grown kernel reads X shifted by the offset difference, i.e. pads its
    input by it, which is where ``fuse_projection`` adds ``b``'s kernel; its bottom/right
    padding only makes both output sizes agree, as they do in the graph.
    """
    offset = (max(a.offset[0], b.offset[0]), max(a.offset[1], b.offset[1]))
    kernel = [max(m.conv.kernel_size[k] + offset[k] - m.offset[k] for m in (a, b)) for k in (0, 1)]
    (ah, aw), (bh, bw) = a.conv.kernel_size, b.conv.kernel_size
    dh, dw = offset[0] - a.offset[0], offset[1] - a.offset[1]
    th, tw = offset[0] - b.offset[0], offset[1] - b.offset[1]
    grown = AffineConv(
        F.pad(a.conv.weight, (dw, kernel[1] - aw - dw, dh, kernel[0] - ah - dh)),
        a.conv.bias,
        a.conv.stride,
        (th, kernel[0] - bh - th, tw, kernel[1] - bw - tw),
        a.conv.groups,
    )
    try:
        fused = fuse_projection(grown, b.conv)
    except ValueError as why:
        raise NotAffine(str(why)) from None
    return AffineMap(replace(fused, padding=(0, 0, 0, 0)), offset)


__all__ = [
    "AffineMap",
    "NotAffine",
    "call_arg",
    "is_conv",
    "is_zero_pad",
    "propagate",
    "spatial_size",
]
