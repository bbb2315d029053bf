"""The ops of the ring-skipping training view (:mod:`depthfx.passes.trim_ring`).

A "ring map" is a map of a prepared network's merge group kept as its ring constant ``c``
(1×C×1×1: the value everywhere outside a live box, the same for every sample) and its delta
``d`` over the box (a tensor, in the map's coordinates: the map minus ``c``, zero outside the
box). Each op here computes the ring map of its output from those of its inputs, exactly: conv,
BN (batch statistics over the whole map, ring included), add, crop; ``fill`` turns a ring map
back into a tensor over any window.

Why deltas: conv and BN are affine, so a conv's delta is the zero-padded conv (no bias) of its
input's delta and BN's is the delta times BN's scale; the constant takes the bias and the
shift. A chain of ring ops then runs its convs on the deltas as they are, with no per-op
elementwise pass to add or subtract the constants.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Per spatial axis, the half-open interval [lo, hi) of a map's live box.
Box = tuple[tuple[int, int], tuple[int, int]]


def layout(x: torch.Tensor) -> torch.memory_format:
    """The memory format of ``x``, read from its strides so that a slice of a channels-last
    map counts as channels-last."""
    channels_last = x.dim() == 4 and x.stride(1) < x.stride(3)
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


def _pads(box: Box, window: Box) -> list[int]:
    """F.pad's (left, right, top, bottom) taking a map over ``box`` to ``window`` (negative:
    crop)."""
    (r0, r1), (c0, c1) = box
    (w0, w1), (v0, v1) = window
    return [c0 - v0, v1 - c1, r0 - w0, w1 - r1]


@torch.fx.wrap
def window_delta(delta: torch.Tensor, box: Box, window: Box) -> torch.Tensor:
    """The delta over ``window``: ``delta`` inside ``box``, zero elsewhere."""
    if window == box:
        return delta
    (r0, r1), (c0, c1) = box
    (w0, w1), (v0, v1) = window
    if r0 <= w0 and w1 <= r1 and c0 <= v0 and v1 <= c1:
        return delta[:, :, w0 - r0 : w1 - r0, v0 - c0 : v1 - c0]
    if max(r0, w0) >= min(r1, w1) or max(c0, v0) >= min(c1, v1):  # disjoint
        return delta.new_zeros(delta.shape[0], delta.shape[1], w1 - w0, v1 - v0)
    out = F.pad(delta, _pads(box, window))
    return out.contiguous(memory_format=layout(delta))


@torch.fx.wrap
def fill(delta: torch.Tensor, const: torch.Tensor, box: Box, window: Box) -> torch.Tensor:
    """The map over ``window``: ``const`` plus ``delta`` inside ``box``."""
    return window_delta(delta, box, window) + const


@torch.fx.wrap
def zero_ring(x: torch.Tensor) -> torch.Tensor:
    """The ring constant of a zero-padded map: zeros, 1×C×1×1 (one for every sample)."""
    return x.new_zeros(1, x.shape[1], 1, 1)


@torch.fx.wrap
def ring_conv(
    delta: torch.Tensor,
    const: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    box: Box,
    read: Box,
) -> tuple[torch.Tensor, torch.Tensor]:
    """An unpadded conv2d of a ring map: the output constant is the conv of a patch of the
    input's (bias included), the delta over the live outputs the conv without bias of the
    input delta over ``read``. Where ``read`` extends the box by a padding the conv takes (per
    axis: equal on both sides, or less after than before, the extra outputs dropped), the conv
    pads the delta itself: no window is built (a copy forward, a slice backward)."""
    span = (dilation[0] * (weight.shape[2] - 1) + 1, dilation[1] * (weight.shape[3] - 1) + 1)
    ring = F.conv2d(const.expand(-1, -1, *span), weight, bias, 1, 0, dilation, groups)
    pads = [(b[0] - r[0], r[1] - b[1]) for b, r in zip(box, read, strict=True)]
    if not all(0 <= after <= before for before, after in pads):
        window = window_delta(delta, box, read).contiguous(memory_format=layout(delta))
        return keep_layout(F.conv2d(window, weight, None, stride, 0, dilation, groups)), ring
    out = F.conv2d(delta, weight, None, stride, (pads[0][0], pads[1][0]), dilation, groups)
    rows, cols = ((r1 - r0 - k) // s + 1 for (r0, r1), k, s in zip(read, span, stride, strict=True))
    if (rows, cols) != tuple(out.shape[2:]):
        out = out[:, :, :rows, :cols].contiguous(memory_format=layout(delta))
    return keep_layout(out), ring


@torch.fx.wrap
def ring_add(
    a: torch.Tensor, a_const: torch.Tensor, a_box: Box,
    b: torch.Tensor, b_const: torch.Tensor, b_box: Box, hull: Box,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The sum of two ring maps of one size, live over the hull of their boxes."""
    return window_delta(a, a_box, hull) + window_delta(b, b_box, hull), a_const + b_const


class RingBatchNorm(nn.Module):
    """``bn`` (an ``nn.BatchNorm2d``, shared) on a ring map: in train mode the batch statistics
    cover the whole map, ``ring`` positions per sample holding the constant, and the running
    statistics are updated as ``bn`` updates them; in eval mode its running statistics."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.bn = bn

    def forward(
        self, delta: torch.Tensor, const: torch.Tensor, ring: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        bn = self.bn
        factor = 0.0
        if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            momentum = bn.momentum
            factor = 1.0 / float(bn.num_batches_tracked) if momentum is None else momentum
        if bn.training or bn.running_mean is None:
            out, out_const, mean, var = _RingBatchNormFn.apply(
                delta, const, bn.weight, bn.bias, ring, bn.eps
            )
            if bn.training and bn.track_running_stats and bn.running_mean is not None:
                count = delta.shape[0] * (delta.shape[2] * delta.shape[3] + ring)
                with torch.no_grad():
                    bn.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
                    unbiased = var * (count / max(count - 1, 1))
                    bn.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)
            return out, out_const
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale if bn.bias is None else bn.bias - bn.running_mean * scale
        scale, shift = scale.view(1, -1, 1, 1), shift.view(1, -1, 1, 1)
        return delta * scale, torch.addcmul(shift, const, scale)


class _RingBatchNormFn(torch.autograd.Function):
    """Batch-statistics BN of a ring map (d, c) with a hand-written backward.

    The map is x = c + d (c one value per channel for every sample: the view's constants start
    as a pad's zeros and go through sample-independent ops; d zero outside the box; A positions
    per sample, M = N·A in all). BN's output is (a·d, a·(c − μ) + β) with a = γ/σ; μ − c is d's
    mean over the map, so the output does not depend on c (BN is shift-invariant) and c's
    gradient is zero (a zero tensor). Statistics: d's mean and variance over the box
    (``batch_norm_update_stats``, Welford) joined to the ring's zeros, every term centred.
    Gradients (g, h for the two outputs, P = Σ g·d + h·(c − μ), b = −a·P/(σ²·M), k = −a·h/M +
    b·(c − μ)): ∂d = a·g + b·d + k, ∂γ = P/σ, ∂β = h. One fused reduction (Σ g·d) and two passes
    over d, where an autograd graph of broadcast ops costs several times native BN on CPU.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        delta: torch.Tensor,
        const: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        ring: int,
        eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        n, hw = delta.shape[0], delta.shape[2] * delta.shape[3]
        n_box, n_ring = n * hw, n * ring
        count = n_box + n_ring
        mean_d, var_d = torch.batch_norm_update_stats(delta, None, None, 0.0)  # over the box
        c = const.reshape(-1)
        shift_d = mean_d * (n_box / count)  # μ − c: d's mean over the whole map
        mean = c + shift_d
        offset = mean_d - shift_d  # the box's mean of x minus μ (the ring's is −shift_d)
        var = (n_box * (var_d + offset * offset) + n_ring * shift_d * shift_d) / count
        invstd = torch.rsqrt(var + eps)
        scale = invstd if weight is None else invstd * weight
        out_const = -shift_d * scale if bias is None else bias - shift_d * scale
        ctx.save_for_backward(delta, weight, shift_d, invstd)
        ctx.const_shape = const.shape
        ctx.mark_non_differentiable(mean, var)
        ctx.count = count
        s4, c4 = scale.view(1, -1, 1, 1), out_const.view(1, -1, 1, 1)
        return delta * s4, c4, mean, var

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(
        ctx: torch.autograd.function.FunctionCtx,
        grad: torch.Tensor | None,
        grad_const: torch.Tensor | None,
        *_: torch.Tensor,
    ) -> tuple[torch.Tensor | None, ...]:
        delta, weight, shift_d, invstd = ctx.saved_tensors
        count, ch = ctx.count, delta.shape[1]
        if grad is None:
            grad = torch.zeros_like(delta)
        h = torch.zeros_like(invstd) if grad_const is None else grad_const.reshape(ch)
        grad = grad.contiguous(memory_format=layout(delta))
        zeros, ones = torch.zeros_like(invstd), torch.ones_like(invstd)
        _, dot, _ = torch.ops.aten.native_batch_norm_backward(  # Σ g·d, fused
            grad, delta, None, None, None, zeros, ones, True, 0.0, [False, True, False]
        )
        p = dot - h * shift_d
        a = invstd if weight is None else invstd * weight
        b = -a * p * invstd * invstd / count
        k = -a * h / count - b * shift_d
        grad_delta = torch.addcmul(k.view(1, -1, 1, 1), delta, b.view(1, -1, 1, 1))
        grad_delta.addcmul_(grad, a.view(1, -1, 1, 1))
        grad_w = p * invstd if weight is not None and ctx.needs_input_grad[2] else None
        grad_b = h if ctx.needs_input_grad[3] else None
        # zero, not None: the parameters before it (conv biases) get a gradient, so SGD's
        # weight decay reaches them as in the prepared network
        grad_c = grad_delta.new_zeros(ctx.const_shape)
        return grad_delta, grad_c, grad_w, grad_b, None, None


__all__ = [
    "Box",
    "RingBatchNorm",
    "fill",
    "layout",
    "ring_add",
    "ring_conv",
    "window_delta",
    "zero_ring",
]
