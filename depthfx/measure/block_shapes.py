"""What one latency-table entry times: the merged conv of a block, as a shape, without weights.

Pattern: a valid block (i, j) of a chain (convs i+1 … j). Rewrite: the one conv that
``prepare`` + ``convert`` turn it into, followed by what the merged network runs right after
it. Why a shape is enough: latency depends on shapes, not on weight values, so the merged conv
is built with random weights from the general composition rule (spec §5.4), per axis:

* kernel K = k₁ + s₁(k₂ − 1) (each kᵢ dilated to d(k − 1) + 1 first), stride = Π s,
  per-side padding = Σ_m (Π_{l<m} s_l)·P_m (:func:`depthfx.algebra.group_padding`),
  groups = gcd of the groups, in/out channels of the first/last conv;
* then cropped to the block's input size (:func:`depthfx.algebra.crop_window`): border taps
  that meet only zero padding are dropped, as ``convert`` drops them, so at small inputs the
  kernel timed (and bounded) is at most the input extent, not the full composition;
* the input shape is the one recorded at the block's *first* conv, before its own padding
  (spec §2.3: the original recorded it after the previous conv, wrong at pooling positions);
* the activation is ``chain.activation_for(j)`` (a DP block end carries one; the paper always
  appended ReLU, which is wrong for other activations, spec §7 pitfall 3);
* a residual add stays explicit after the block exactly when the block ends at a residual
  target t and starts strictly inside its body (s < i): then the add (and a projection
  shortcut conv) runs right after this conv and before the activation, and the backend fuses
  Conv+Add+Act, so it is timed with the block. A block holding the whole body fuses the
  shortcut into its kernel; one ending elsewhere has no add.

:class:`BlockSpec` is hashable and has a canonical :meth:`~BlockSpec.key`: blocks of identical
shape (they recur a lot, e.g. the repeated stages of MobileNetV2) are measured once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from depthfx.algebra import crop_window, group_padding
from depthfx.backends.limits import weight_limit_reason
from depthfx.backends.onnx_blocks import ACTIVATIONS, conv_block_model
from depthfx.errors import DepthFXError
from depthfx.patterns import ACTIVATION_PARAMS
from depthfx.records import ActivationSlot, Chain, ConvInfo

Pair = tuple[int, int]
Pads = tuple[int, int, int, int]


@dataclass(frozen=True)
class ConvShape:
    """One conv as shapes: per-side padding (top, bottom, left, right), dilation 1."""

    in_channels: int
    out_channels: int
    kernel: Pair
    stride: Pair
    pads: Pads
    groups: int

    def output_hw(self, hw: Sequence[int]) -> Pair:
        top, bottom, left, right = self.pads
        return (
            (hw[0] + top + bottom - self.kernel[0]) // self.stride[0] + 1,
            (hw[1] + left + right - self.kernel[1]) // self.stride[1] + 1,
        )

    def macs(self, hw: Sequence[int], batch: int) -> int:
        """Multiply-accumulates for a ``batch × in × hw`` input."""
        h, w = self.output_hw(hw)
        per_out = self.in_channels // self.groups * self.kernel[0] * self.kernel[1]
        return batch * self.out_channels * h * w * per_out

    def weight_numel(self) -> int:
        return self.out_channels * self.in_channels // self.groups * math.prod(self.kernel)

    def cropped(self, hw: Sequence[int]) -> ConvShape:
        """This conv without the kernel taps that meet only padding at input ``hw``."""
        kernel, pads = crop_window(self.kernel, self.stride, self.pads, hw)
        return ConvShape(
            self.in_channels, self.out_channels, kernel, self.stride, pads, self.groups
        )


@dataclass(frozen=True)
class ResidualSpec:
    """An explicit residual add after the block: the skip tensor's shape, the projection
    shortcut conv on it (None for identity) and whether the skip is the add's first input."""

    skip_shape: tuple[int, ...]
    shortcut: ConvShape | None
    skip_first: bool


@dataclass(frozen=True)
class BlockSpec:
    """The merged conv of a block + explicit residual add + activation, at its input shape."""

    conv: ConvShape
    input_shape: tuple[int, ...]
    activation: tuple[Any, ...] | None
    residual: ResidualSpec | None = None

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (
            self.input_shape[0],
            self.conv.out_channels,
            *self.conv.output_hw(self.input_shape[2:]),
        )

    @property
    def batch(self) -> int:
        return self.input_shape[0]

    def macs(self) -> int:
        """MACs of the merged conv (plus the projection shortcut, if any)."""
        total = self.conv.macs(self.input_shape[2:], self.batch)
        if self.residual is not None and self.residual.shortcut is not None:
            total += self.residual.shortcut.macs(self.residual.skip_shape[2:], self.batch)
        return total

    def key(self) -> str:
        """Canonical JSON text: equal keys ⇔ identical models to time."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    def describe(self) -> str:
        c = self.conv
        act = self.activation[0] if self.activation else "none"
        res = ""
        if self.residual is not None:
            res = " +proj" if self.residual.shortcut is not None else " +add"
        return (
            f"{c.in_channels}->{c.out_channels} k{c.kernel[0]}x{c.kernel[1]} "
            f"s{c.stride[0]},{c.stride[1]} g{c.groups} pad{list(c.pads)} "
            f"@{'x'.join(map(str, self.input_shape))}{res} {act}"
        )

    def inputs(self, dtype: torch.dtype = torch.float32, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """Random inputs in the model's input order (block input, then skip if any)."""
        gen = torch.Generator().manual_seed(seed)
        shapes = [self.input_shape]
        if self.residual is not None:
            shapes.append(self.residual.skip_shape)
        return tuple(torch.randn(s, generator=gen, dtype=dtype) for s in shapes)

    def onnx_model(self, seed: int = 0) -> onnx.ModelProto:
        """The block as a tiny ONNX graph (node-for-node what the exporter emits), or the
        exported torch module for activations the direct builder does not know."""
        if self.activation is not None and self.activation[0] not in ACTIVATIONS:
            from depthfx.export import to_onnx_model

            return to_onnx_model(self.torch_module(seed), self.inputs(), dynamic_batch=False)
        c = self.conv
        top, bottom, left, right = c.pads
        rng = np.random.default_rng(seed)
        # Values do not change latency; tiling a short random vector builds a gigabyte-sized
        # merged kernel in a memcpy instead of seconds of normal sampling.
        pattern = rng.standard_normal(4099, dtype=np.float32) * np.float32(0.05)
        model = conv_block_model(
            c.in_channels,
            c.out_channels,
            c.kernel,
            self.input_shape[2:],
            batch=self.batch,
            stride=c.stride,
            pads=(top, left, bottom, right),
            groups=c.groups,
            activation=self.activation,
            weight=np.resize(pattern, (c.out_channels, c.in_channels // c.groups, *c.kernel)),
            bias=np.resize(pattern, c.out_channels),
        )
        if self.residual is not None:
            _insert_residual(model, self.residual, seed)
        return model

    def unbuildable(self, *, onnx: bool, memory: int | None, jobs: int = 1) -> str | None:
        """Why the backend cannot load this block's (cropped) merged conv, or None
        (:func:`depthfx.backends.limits.weight_limit_reason`)."""
        c = self.conv
        return weight_limit_reason(
            c.out_channels, c.in_channels, c.groups, c.kernel, onnx=onnx, memory=memory, jobs=jobs
        )

    def proxy(self, max_weights: int) -> BlockSpec | None:
        """The same conv with fewer output channels (weights ≤ ``max_weights``), no add: less
        work of the same kind, so not slower than this block. None if already small enough
        or grouped (its channel split would change)."""
        c = self.conv
        if c.weight_numel() <= max_weights or c.groups != 1:
            return None
        out = max(1, max_weights // (c.in_channels * math.prod(c.kernel)))
        small = ConvShape(c.in_channels, out, c.kernel, c.stride, c.pads, 1)
        return BlockSpec(small, self.input_shape, self.activation, None)

    def torch_module(self, seed: int = 0) -> nn.Module:
        """The block as an eval-mode module (ZeroPad2d, Conv2d, [shortcut, add], activation),
        for backends that compile modules (torch, torch-tensorrt)."""
        torch.manual_seed(seed)
        return _TorchBlock(self).eval()


class _TorchBlock(nn.Module):
    """forward(x[, skip]) = act(conv(pad(x)) [+ shortcut(skip)]) with random weights."""

    def __init__(self, spec: BlockSpec) -> None:
        super().__init__()
        self.conv = _conv_modules(spec.conv)
        self.shortcut: nn.Module | None = None
        self.skip_first = False
        if spec.residual is not None:
            self.skip_first = spec.residual.skip_first
            sc = spec.residual.shortcut
            self.shortcut = nn.Identity() if sc is None else _conv_modules(sc)
        self.act = _activation_module(spec.activation)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        y = self.conv(x)
        if self.shortcut is not None:
            s = self.shortcut(skip)
            y = s + y if self.skip_first else y + s
        return self.act(y)


def _conv_modules(c: ConvShape) -> nn.Sequential:
    top, bottom, left, right = c.pads
    conv = nn.Conv2d(c.in_channels, c.out_channels, c.kernel, c.stride, groups=c.groups)
    return (
        nn.Sequential(nn.ZeroPad2d((left, right, top, bottom)), conv)
        if any(c.pads)
        else nn.Sequential(conv)
    )


def _activation_module(spec: tuple[Any, ...] | None) -> nn.Module:
    if spec is None:
        return nn.Identity()
    from depthfx.patterns import make_activation

    op, *values = spec
    names = [name for name, _ in ACTIVATION_PARAMS.get(op, ())]
    return make_activation(op, dict(zip(names, values, strict=True)))


def _insert_residual(model: onnx.ModelProto, res: ResidualSpec, seed: int) -> None:
    """Rewrite ``Conv → [act] → output`` into ``Conv → Add(skip) → [act] → output``."""
    graph = model.graph
    conv = graph.node[0]
    conv_out = conv.output[0]
    if conv_out == "output":  # no activation: the Add now produces the graph output
        conv.output[0] = "conv"
        conv_out, sum_out = "conv", "output"
    else:
        sum_out = "residual_sum"
        for node in graph.node[1:]:
            node.input[:] = [sum_out if x == conv_out else x for x in node.input]
    skip = "skip"
    graph.input.append(
        helper.make_tensor_value_info("skip", onnx.TensorProto.FLOAT, list(res.skip_shape))
    )
    nodes = []
    if res.shortcut is not None:
        sc = res.shortcut
        rng = np.random.default_rng(seed + 1)
        w_shape = (sc.out_channels, sc.in_channels // sc.groups, *sc.kernel)
        weight = rng.standard_normal(w_shape, dtype=np.float32) * np.float32(0.1)
        bias = rng.standard_normal(sc.out_channels, dtype=np.float32) * np.float32(0.1)
        graph.initializer.extend(
            [
                numpy_helper.from_array(weight, "shortcut_weight"),
                numpy_helper.from_array(bias, "shortcut_bias"),
            ]
        )
        top, bottom, left, right = sc.pads
        nodes.append(
            helper.make_node(
                "Conv",
                ["skip", "shortcut_weight", "shortcut_bias"],
                ["shortcut"],
                group=sc.groups,
                pads=[top, left, bottom, right],
                auto_pad="NOTSET",
                strides=list(sc.stride),
                dilations=[1, 1],
                kernel_shape=list(sc.kernel),
            )
        )
        skip = "shortcut"
    operands = [skip, conv_out] if res.skip_first else [conv_out, skip]
    nodes.append(helper.make_node("Add", operands, [sum_out]))
    for offset, node in enumerate(nodes, start=1):
        graph.node.insert(offset, node)


def merged_conv(convs: Sequence[ConvInfo]) -> ConvShape:
    """Shape of the one conv that ``convs`` (consecutive, padding moved) compose into."""
    kernel, stride = [1, 1], [1, 1]
    for c in convs:
        for ax in range(2):
            k = c.dilation[ax] * (c.kernel[ax] - 1) + 1
            kernel[ax] += stride[ax] * (k - 1)
            stride[ax] *= c.stride[ax]
    return ConvShape(
        in_channels=convs[0].in_channels,
        out_channels=convs[-1].out_channels,
        kernel=(kernel[0], kernel[1]),
        stride=(stride[0], stride[1]),
        pads=group_padding(convs),
        groups=math.gcd(*(c.groups for c in convs)),
    )


def activation_spec(slot: ActivationSlot | None) -> tuple[Any, ...] | None:
    """``(op, *params)`` in :data:`depthfx.patterns.ACTIVATION_PARAMS` order (JSON-able)."""
    if slot is None:
        return None
    names = [name for name, _ in ACTIVATION_PARAMS.get(slot.op, ())]
    values = [slot.params.get(n) for n in names]
    return (slot.op, *(float(v) if isinstance(v, int | float) else v for v in values))


def _conv_shape(c: ConvInfo) -> ConvShape:
    return merged_conv([c])


def _skip_first(chain: Chain, src: int, add_node: str, graph_nodes: dict[str, Any]) -> bool:
    """Whether the shortcut is the first operand of the residual add in the original graph."""
    node = graph_nodes.get(add_node)
    if node is None or not node.args:
        return False
    first = getattr(node.args[0], "name", None)
    res = next(r for r in chain.residuals if r.add_node == add_node)
    skip_names = {chain.input_node if src == 0 else chain.position_nodes[src]}
    if res.shortcut is not None:
        skip_names |= {res.shortcut.output_node, res.shortcut.node}
    return first in skip_names


def block_spec(
    chain: Chain,
    i: int,
    j: int,
    *,
    batch: int | None = None,
    graph_nodes: dict[str, Any] | None = None,
) -> BlockSpec:
    """The spec of block (i, j) of ``chain`` (``batch`` replaces the traced batch size)."""
    if (i, j) not in set(chain.valid_blocks()):
        raise DepthFXError(f"chain {chain.index}: ({i}, {j}) is not a valid block")
    convs = chain.convs[i:j]
    conv = merged_conv(convs).cropped(convs[0].input_shape[2:])
    n = batch if batch is not None else convs[0].input_shape[0]
    input_shape = (n, *convs[0].input_shape[1:])
    residual = None
    for r in chain.residuals:
        if r.dst == j and r.src < i:
            at_src = chain.convs[r.src - 1].output_shape if r.src else convs[0].input_shape
            skip = (n, *at_src[1:])
            shortcut = _conv_shape(r.shortcut) if r.shortcut is not None else None
            first = _skip_first(chain, r.src, r.add_node, graph_nodes or {})
            residual = ResidualSpec(skip, shortcut, first)
    spec = BlockSpec(conv, tuple(input_shape), activation_spec(chain.activation_for(j)), residual)
    expected = (n, *convs[-1].output_shape[1:])
    if spec.output_shape != expected:
        raise DepthFXError(
            f"chain {chain.index} block ({i}, {j}): merged conv gives {spec.output_shape}, "
            f"the traced model has {expected}; the merge shape rule does not hold here"
        )
    return spec
