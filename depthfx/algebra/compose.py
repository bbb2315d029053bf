"""Compose consecutive convolutions into one (spec §5.4, general rule; pitfalls 5–8, 11, 13).

For y = conv₂(conv₁(x)) with strides s₁, s₂ (per axis) and no zero padding of the intermediate
map (the padding-moved convention, spec §5.1):

    y[o, p] = Σ_{c,u} W₂[o,c,u] (Σ_{i,v} W₁[c,i,v] x[i, s₁s₂p + s₁u + v] + b₁[c]) + b₂[o]

so conv₂∘conv₁ is one conv with

    W[o,i,t] = Σ_c Σ_{s₁u + v = t} W₂[o,c,u] · W₁[c,i,v]    (W₂ dilated by s₁, fully convolved
                                                             with W₁; K = k₁ + s₁(k₂ − 1))
    b[o]     = Σ_{c,u} W₂[o,c,u] · b₁[c] + b₂[o]
    stride   = s₁ · s₂
    padding  = P₁ + s₁ · P₂   per side: conv₂'s padding, moved in front of conv₁, scaled by s₁.

The composition is exact (output shapes agree for every input size because
⌊⌊A/s₁⌋/s₂⌋ = ⌊A/(s₁s₂)⌋) *provided* the intermediate map is not zero-padded: with conv₂ padding
its own input, the border values of conv₂'s input would be 0 instead of conv₁ applied to padded
zeros (= b₁ plus partial sums), and no single conv reproduces that. That is why padding is moved
to the start of a merge group before fine-tuning; ``group_padding`` gives the moved padding.

Groups: conv₁ splits (I, C) into g₁ contiguous equal blocks, conv₂ splits (C, O) into g₂. The
finest partition of C that coarsens both has g = gcd(g₁, g₂) blocks (its boundaries are the
common multiples of C/g₁ and C/g₂), so the composition is g-grouped: depthwise∘depthwise stays
depthwise, depthwise∘pointwise is dense. Depth-multiplier convs (out = m·in, groups = in) and
1-channel dense convs are ordinary instances of this rule; nothing assumes out == in. The kernel
is computed as batched matrix products over the groups of the sparser operand, so the only dense
expansion formed is that of the other operand to the result's g blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce
from math import gcd
from typing import Protocol

import torch
from torch import Tensor, nn

from depthfx.algebra.kernel import AffineConv, Padding4, conv_padding


def _merged_weight(first: AffineConv, second: AffineConv, groups: int) -> Tensor:
    """W of second∘first as a ``groups``-grouped weight [O, I/groups, Kh, Kw].

    For each tap u of W₂, the channel contraction Σ_c W₂[o,c,u]·W₁[c,i,·] is one batched matrix
    product over the fine groups of the sparser operand (g₁ or g₂ blocks), and lands at kernel
    offset s₁·u. The denser operand is block-expanded only to the g coarse blocks of the result.
    """
    out_channels, mid, in_channels = second.out_channels, first.out_channels, first.in_channels
    (k1h, k1w), (k2h, k2w), (sh, sw) = first.kernel_size, second.kernel_size, first.stride
    out_g, in_g = out_channels // groups, in_channels // groups
    batch_over_first, fine = first.groups >= second.groups, first.groups // groups
    if batch_over_first:
        # Batch over the g₁ groups of W₁: rows o ∈ the coarse block, columns i ∈ the fine group.
        w2 = second.block_weight(groups).reshape(groups, out_g, fine, mid // first.groups, k2h, k2w)
        w2 = w2.transpose(1, 2).reshape(first.groups, out_g, mid // first.groups, k2h, k2w)
        w1 = first.weight.reshape(first.groups, mid // first.groups, -1)
    else:
        # Batch over the g₂ groups of W₂: rows o ∈ the fine group, columns i ∈ the coarse block.
        w2 = second.weight.reshape(second.groups, out_channels // second.groups, -1, k2h, k2w)
        w1 = first.block_weight(groups).reshape(second.groups, mid // second.groups, -1)
    merged = w1.new_zeros(groups, out_g, in_g, *merged_kernel(first, second))
    for u in range(k2h):
        for v in range(k2w):
            part = torch.matmul(w2[..., u, v], w1)
            if batch_over_first:
                part = part.reshape(groups, fine, out_g, in_channels // first.groups, k1h, k1w)
                part = part.transpose(1, 2)
            merged[..., sh * u : sh * u + k1h, sw * v : sw * v + k1w] += part.reshape(
                groups, out_g, in_g, k1h, k1w
            )
    return merged.reshape(out_channels, in_g, *merged.shape[-2:])


def merged_kernel(first: AffineConv, second: AffineConv) -> tuple[int, int]:
    """Kernel size of second∘first per axis: K = k₁ + s₁·(k₂ − 1)."""
    return (
        first.kernel_size[0] + first.stride[0] * (second.kernel_size[0] - 1),
        first.kernel_size[1] + first.stride[1] * (second.kernel_size[1] - 1),
    )


def compose(first: AffineConv, second: AffineConv) -> AffineConv:
    """y = second(first(x)) as one conv, with second's padding moved in front of first."""
    if second.in_channels != first.out_channels:
        raise ValueError(
            f"cannot compose: first conv has {first.out_channels} outputs, second conv expects "
            f"{second.in_channels} inputs"
        )
    groups = gcd(first.groups, second.groups)
    mid = first.out_channels
    second_sum = second.weight.sum(dim=(2, 3)).reshape(
        second.groups, second.out_channels // second.groups, mid // second.groups
    )
    carried = second_sum @ first.bias.reshape(second.groups, mid // second.groups, 1)
    (t1, b1, l1, r1), (t2, b2, l2, r2) = first.padding, second.padding
    sh, sw = first.stride
    return AffineConv(
        weight=_merged_weight(first, second, groups),
        bias=carried.reshape(-1) + second.bias,
        stride=(sh * second.stride[0], sw * second.stride[1]),
        padding=(t1 + sh * t2, b1 + sh * b2, l1 + sw * l2, r1 + sw * r2),
        groups=groups,
    )


def compose_all(convs: Sequence[AffineConv]) -> AffineConv:
    """convs[-1](…convs[1](convs[0](x))) as one conv (padding moved to the group input)."""
    if not convs:
        raise ValueError("compose_all needs at least one conv")
    return reduce(compose, convs)


class PaddedStrided(Protocol):
    """Anything with per-side ``padding`` (t, b, l, r) and a ``stride`` pair (e.g. ConvInfo)."""

    @property
    def padding(self) -> Padding4: ...

    @property
    def stride(self) -> tuple[int, int]: ...


def group_padding(convs: Sequence[AffineConv | nn.Conv2d | PaddedStrided]) -> Padding4:
    """Total per-side input padding (t, b, l, r) of a moved group: Σ_j (Π_{i<j} s_i) · P_j.

    This is the padding the group's first conv gets when all later paddings move to it, and it
    equals ``compose_all(convs).padding``.
    """
    total = [0, 0, 0, 0]
    scale_h, scale_w = 1, 1
    for conv in convs:
        if isinstance(conv, nn.Conv2d):
            padding = conv_padding(conv)
            stride = (conv.stride[0], conv.stride[1])
        else:
            padding, stride = conv.padding, conv.stride
        for side, (pad, scale) in enumerate(
            zip(padding, (scale_h, scale_h, scale_w, scale_w), strict=True)
        ):
            total[side] += scale * pad
        scale_h, scale_w = scale_h * stride[0], scale_w * stride[1]
    return (total[0], total[1], total[2], total[3])
