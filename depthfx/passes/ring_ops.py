"""The ops of the ring-skipping training view (:mod:`depthfx.passes.trim_ring`).

A "ring map" is a map of a prepared network's merge group kept as its live box (a tensor over
the box, in the map's coordinates) and its ring constant (N×C×1×1: the value everywhere outside
the box). Each op here computes the ring map of its output from those of its inputs, exactly:
conv, BN (batch statistics over the whole map, ring included), add, crop; ``fill`` turns a ring
map back into a tensor over any window.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Per spatial axis, the half-open interval [lo, hi) of a map's live box.
Box = tuple[tuple[int, int], tuple[int, int]]


def layout(x: torch.Tensor) -> torch.memory_format:
    """The memory format of ``x`` (channels-last maps stay channels-last)."""
    channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format


class _GradLayout(torch.autograd.Function):
    """Identity whose gradient takes the memory format of the forward value: slicing a
    channels-last map hands back contiguous gradients, which slow the conv backward."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        ctx.layout = layout(x)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous(memory_format=ctx.layout)


def keep_layout(x: torch.Tensor) -> torch.Tensor:
    """``x``, its gradient in ``x``'s memory format (channels-last maps only)."""
    if layout(x) is torch.contiguous_format or not x.requires_grad:
        return x
    return _GradLayout.apply(x)


@torch.fx.wrap
def fill(live: torch.Tensor, const: torch.Tensor, box: Box, window: Box) -> torch.Tensor:
    """The map over ``window``: ``live`` inside ``box``, ``const`` elsewhere."""
    if window == box:
        return live
    (r0, r1), (c0, c1) = box
    (w0, w1), (v0, v1) = window
    if r0 <= w0 and w1 <= r1 and c0 <= v0 and v1 <= c1:
        return live[:, :, w0 - r0 : w1 - r0, v0 - c0 : v1 - c0]
    n, ch = live.shape[:2]
    out = const.expand(n, ch, w1 - w0, v1 - v0).clone(memory_format=layout(live))
    i0, i1, j0, j1 = max(r0, w0), min(r1, w1), max(c0, v0), min(c1, v1)
    if i1 > i0 and j1 > j0:
        out[:, :, i0 - w0 : i1 - w0, j0 - v0 : j1 - v0] = live[
            :, :, i0 - r0 : i1 - r0, j0 - c0 : j1 - c0
        ]
    return out


@torch.fx.wrap
def zero_ring(x: torch.Tensor) -> torch.Tensor:
    """The ring constant of a zero-padded map: zeros, N×C×1×1."""
    return x.new_zeros(x.shape[0], x.shape[1], 1, 1)


@torch.fx.wrap
def ring_conv(
    live: torch.Tensor,
    const: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    box: Box,
    read: Box,
) -> tuple[torch.Tensor, torch.Tensor]:
    """An unpadded conv2d of a ring map: the live outputs from the input window ``read``, the
    ring as the conv of a patch of the input's constant."""
    window = fill(live, const, box, read).contiguous(memory_format=layout(live))
    out = keep_layout(F.conv2d(window, weight, bias, stride, 0, dilation, groups))
    span = (dilation[0] * (weight.shape[2] - 1) + 1, dilation[1] * (weight.shape[3] - 1) + 1)
    ring = F.conv2d(const.expand(-1, -1, *span), weight, bias, 1, 0, dilation, groups)
    return out, ring


@torch.fx.wrap
def ring_add(
    a: torch.Tensor, a_const: torch.Tensor, a_box: Box,
    b: torch.Tensor, b_const: torch.Tensor, b_box: Box, hull: Box,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The sum of two ring maps of one size, live over the hull of their boxes."""
    return fill(a, a_const, a_box, hull) + fill(b, b_const, b_box, hull), a_const + b_const


class RingBatchNorm(nn.Module):
    """``bn`` (an ``nn.BatchNorm2d``, shared) on a ring map: in train mode the batch statistics
    cover the whole map, ``ring`` positions per sample holding the constant, and the running
    statistics are updated as ``bn`` updates them; in eval mode its running statistics."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.bn = bn

    def forward(
        self, live: torch.Tensor, const: torch.Tensor, ring: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        bn = self.bn
        factor = 0.0
        if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            momentum = bn.momentum
            factor = 1.0 / float(bn.num_batches_tracked) if momentum is None else momentum
        if bn.training or bn.running_mean is None:
            mean, var = self._batch_stats(live, const, ring, factor)
        else:
            mean, var = bn.running_mean, bn.running_var
        scale = torch.rsqrt(var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -mean * scale if bn.bias is None else bn.bias - mean * scale
        scale, shift = scale.view(1, -1, 1, 1), shift.view(1, -1, 1, 1)
        return torch.addcmul(shift, live, scale), torch.addcmul(shift, const, scale)

    def _batch_stats(
        self, live: torch.Tensor, const: torch.Tensor, ring: int, factor: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and biased variance over the whole map, the live box's sums plus the counted
        ring's, in two passes (mean, then squared deviations: a one-pass sum of squares loses
        fp32 precision in the gradients; ``var_mean`` costs several times more on CPU);
        updates the running statistics in train mode."""
        bn = self.bn
        n = live.shape[0]
        count = n * (live.shape[2] * live.shape[3] + ring)
        mean = (live.sum((0, 2, 3)) + ring * const.sum((0, 2, 3))) / count
        m = mean.view(1, -1, 1, 1)
        d, dc = live - m, const - m
        var = ((d * d).sum((0, 2, 3)) + ring * (dc * dc).sum((0, 2, 3))) / count
        if bn.training and bn.track_running_stats and bn.running_mean is not None:
            with torch.no_grad():
                bn.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                unbiased = var.detach() * (count / max(count - 1, 1))
                bn.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)
        return mean, var


__all__ = ["Box", "RingBatchNorm", "fill", "layout", "ring_add", "ring_conv", "zero_ring"]
