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
    ring as the conv of a patch of the input's constant.

    Where ``read`` extends the box by a padding the conv can take (per axis: equal on both
    sides, or less after than before, the extra outputs dropped), conv is linear: the window is
    (live − c) zero-padded plus c everywhere, so the outputs are the padded conv of live − c
    plus the ring value, without building the window (a copy forward, a slice backward)."""
    span = (dilation[0] * (weight.shape[2] - 1) + 1, dilation[1] * (weight.shape[3] - 1) + 1)
    ring = F.conv2d(const.expand(-1, -1, *span), weight, bias, 1, 0, dilation, groups)
    pads = [(b[0] - r[0], r[1] - b[1]) for b, r in zip(box, read, strict=True)]
    if all(0 <= after <= before for before, after in pads):
        # live + (−c): c's gradient is a sum of the map's, not a negated copy of it first
        out = F.conv2d(live + -const, weight, None, stride, (pads[0][0], pads[1][0]),
                       dilation, groups).add_(ring)  # fmt: skip
        rows, cols = ((r1 - r0 - k) // s + 1 for (r0, r1), k, s in zip(read, span, stride))
        if (rows, cols) != tuple(out.shape[2:]):
            out = out[:, :, :rows, :cols].contiguous(memory_format=layout(live))
        return keep_layout(out), ring
    window = fill(live, const, box, read).contiguous(memory_format=layout(live))
    out = keep_layout(F.conv2d(window, weight, bias, stride, 0, dilation, groups))
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
            live_out, const_out, mean, var = _RingBatchNormFn.apply(
                live, const, bn.weight, bn.bias, ring, bn.eps
            )
            if bn.training and bn.track_running_stats and bn.running_mean is not None:
                count = live.shape[0] * (live.shape[2] * live.shape[3] + ring)
                with torch.no_grad():
                    bn.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
                    unbiased = var * (count / max(count - 1, 1))
                    bn.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)
            return live_out, const_out
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale if bn.bias is None else bn.bias - bn.running_mean * scale
        scale, shift = scale.view(1, -1, 1, 1), shift.view(1, -1, 1, 1)
        return (live * scale).add_(shift), torch.addcmul(shift, const, scale)


class _RingBatchNormFn(torch.autograd.Function):
    """Batch-statistics BN of a ring map with a hand-written backward: the standard BN
    gradient over the whole map, its sums split into the box's and the counted ring's. Fused
    native reductions (``batch_norm_update_stats``, ``native_batch_norm_backward``) and in-place
    per-channel affines replace an autograd graph of broadcast ops, which cost several times
    native BN on CPU (channels-last above all)."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        live: torch.Tensor,
        const: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        ring: int,
        eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        n = live.shape[0]
        n_box, n_ring = n * live.shape[2] * live.shape[3], n * ring
        count = n_box + n_ring
        mean, var = torch.batch_norm_update_stats(live, None, None, 0.0)  # over the box, biased
        if ring:  # the ring's statistics joined pairwise (Chan et al.): no cancellation
            c = const.reshape(n, -1)
            mean_r, var_r = c.mean(0), c.var(0, correction=0)
            delta = mean_r - mean
            mean = mean + delta * (n_ring / count)
            var = (var * n_box + var_r * n_ring + delta * delta * (n_box * n_ring / count)) / count
        invstd = torch.rsqrt(var + eps)
        scale = invstd if weight is None else invstd * weight
        shift = -mean * scale if bias is None else bias - mean * scale
        s4, b4 = scale.view(1, -1, 1, 1), shift.view(1, -1, 1, 1)
        ctx.save_for_backward(live, const, weight, mean, invstd)
        ctx.mark_non_differentiable(mean, var)
        ctx.ring, ctx.count, ctx.eps = ring, count, eps
        return (live * s4).add_(b4), const * s4 + b4, mean, var

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(
        ctx: torch.autograd.function.FunctionCtx,
        grad: torch.Tensor | None,
        grad_const: torch.Tensor | None,
        *_: torch.Tensor,
    ) -> tuple[torch.Tensor | None, ...]:
        live, const, weight, mean, invstd = ctx.saved_tensors
        ring, count = ctx.ring, ctx.count
        if grad is None:
            grad = torch.zeros_like(live)
        if grad_const is None:
            grad_const = torch.zeros_like(const)
        grad = grad.contiguous(memory_format=layout(live))
        # box sums: Σ dy·(x − μ)·invstd and Σ dy, fused
        _, dot, total = torch.ops.aten.native_batch_norm_backward(
            grad, live, None, None, None, mean, invstd, True, ctx.eps, [False, True, True]
        )
        m4, i4 = mean.view(1, -1, 1, 1), invstd.view(1, -1, 1, 1)
        const_hat = (const - m4) * i4
        g_ring = grad_const.sum((0, 2, 3))  # the ring's positions, summed by the consumers
        total = total + g_ring
        dot = dot + (grad_const * const_hat).sum((0, 2, 3))
        a = invstd if weight is None else invstd * weight
        # dx = a·(dy − Σdy/M − x̂·Σdy·x̂/M) = a·dy + b·x + k, per channel
        b = -a * dot * invstd / count
        k = -a * total / count - b * mean
        grad_live = (live * b.view(1, -1, 1, 1)).addcmul_(grad, a.view(1, -1, 1, 1))
        grad_live.add_(k.view(1, -1, 1, 1))
        a4 = a.view(1, -1, 1, 1)
        grad_c = a4 * (grad_const - (total * (ring / count)).view(1, -1, 1, 1)
                       - const_hat * (dot * (ring / count)).view(1, -1, 1, 1))  # fmt: skip
        grad_w = dot if weight is not None and ctx.needs_input_grad[2] else None
        grad_b = total if ctx.needs_input_grad[3] else None
        return grad_live, grad_c, grad_w, grad_b, None, None


__all__ = ["Box", "RingBatchNorm", "fill", "layout", "ring_add", "ring_conv", "zero_ring"]
