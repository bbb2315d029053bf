"""Fold an eval-mode BatchNorm into the conv before it.

In eval mode BN is a per-channel affine map of the conv output z:

    BN(z)[o] = (z[o] − μ[o]) · γ[o]/σ[o] + β[o],    σ[o] = √(running_var[o] + eps)

and z[o] = (W ⋆ x)[o] + b[o] is linear in W and b, so conv→BN is the single conv

    W′[o] = W[o] · γ[o]/σ[o],    b′[o] = (b[o] − μ[o]) · γ[o]/σ[o] + β[o].

The identity holds pointwise, padded borders included (BN acts after the conv), so the fold is
exact up to round-off; it is done in float64. Each BN's *own* ``eps`` is used (the reference
code hard-codes 1e-5, wrong for e.g. timm EfficientNet-Lite's 1e-3; spec §7 pitfall 4). A
non-affine BN has γ = 1, β = 0. Only the running statistics are read: the result equals the BN in
eval mode, never in training mode (batch statistics), so merge an eval-mode model. An activation
bundled in the BN module (timm ``BatchNormAct2d``) is not part of the fold; the caller keeps it.

The math only: ``depthfx.passes.convert`` folds each merge group's BNs with it, and the graph
pass :mod:`depthfx.passes.fold_bn` folds conv→BN pairs of a GraphModule in place.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from depthfx.algebra.kernel import AffineConv


def fold_bn_tensors(
    conv: AffineConv,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    *,
    eps: float,
) -> AffineConv:
    """Fold the eval-mode ``F.batch_norm(·, running_mean, running_var, weight, bias, eps=eps)``.

    ``weight``/``bias`` (γ/β) may be None for a non-affine BN.
    """
    channels = conv.out_channels
    for name, tensor in (("running_mean", running_mean), ("running_var", running_var)):
        if tuple(tensor.shape) != (channels,):
            raise ValueError(
                f"BN {name} has shape {tuple(tensor.shape)}, the conv has {channels} outputs"
            )
    mean = running_mean.detach().to(torch.float64)
    var = running_var.detach().to(torch.float64)
    gamma = torch.ones_like(mean) if weight is None else weight.detach().to(torch.float64)
    beta = torch.zeros_like(mean) if bias is None else bias.detach().to(torch.float64)
    scale = gamma / torch.sqrt(var + eps)
    return replace(
        conv,
        weight=conv.weight * scale.reshape(-1, 1, 1, 1),
        bias=(conv.bias - mean) * scale + beta,
    )


def fold_bn(conv: AffineConv, bn: nn.BatchNorm2d) -> AffineConv:
    """Fold ``bn`` (eval mode, its own eps, affine or not) into ``conv``: W·γ/σ, (b − μ)·γ/σ + β."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            "BN without running statistics (track_running_stats=False) normalises with batch "
            "statistics and cannot be folded into a conv"
        )
    return fold_bn_tensors(conv, bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=bn.eps)
