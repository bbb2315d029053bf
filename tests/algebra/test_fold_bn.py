"""BN folding against eval-mode nn.BatchNorm2d / F.batch_norm in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from depthfx.algebra import fold_bn, fold_bn_tensors, from_conv


def _random_bn(channels: int, *, eps: float, affine: bool) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels, eps=eps, affine=affine).double().eval()
    with torch.no_grad():
        bn.running_mean.normal_(0.0, 2.0)
        bn.running_var.uniform_(1e-3, 3.0)  # small variances make eps matter
        if affine:
            bn.weight.normal_(1.0, 0.5)
            bn.bias.normal_(0.0, 1.0)
    return bn


@pytest.mark.parametrize("eps", [1e-5, 1e-3, 0.1])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("groups", [1, 2, 6])
def test_fold_bn_matches_module(eps: float, affine: bool, bias: bool, groups: int) -> None:
    conv = nn.Conv2d(6, 12, 3, stride=2, padding=1, groups=groups, bias=bias).double()
    bn = _random_bn(12, eps=eps, affine=affine)
    x = torch.randn(2, 6, 9, 8, dtype=torch.float64)
    folded = fold_bn(from_conv(conv), bn)
    torch.testing.assert_close(folded(x), bn(conv(x)), rtol=1e-10, atol=1e-10)


def test_fold_bn_uses_the_bn_eps() -> None:
    """EfficientNet-Lite's eps=1e-3 with a small variance: a hard-coded 1e-5 is visibly wrong."""
    conv = nn.Conv2d(3, 4, 3, padding=1).double()
    bn = _random_bn(4, eps=1e-3, affine=True)
    with torch.no_grad():
        bn.running_var.fill_(1e-3)
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    affine = from_conv(conv)
    right = fold_bn(affine, bn)
    wrong = fold_bn_tensors(affine, bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=1e-5)
    torch.testing.assert_close(right(x), bn(conv(x)), rtol=1e-10, atol=1e-10)
    assert (wrong(x) - bn(conv(x))).abs().max() > 0.1


def test_fold_bn_tensors_matches_functional_batch_norm() -> None:
    conv = nn.Conv2d(4, 8, (1, 3), padding=(0, 1), groups=4).double()
    mean, var = torch.randn(8), torch.rand(8) + 0.1
    weight, bias = torch.randn(8), torch.randn(8)  # fp32 stats: the fold casts to float64
    x = torch.randn(2, 4, 5, 7, dtype=torch.float64)
    folded = fold_bn_tensors(from_conv(conv), mean, var, weight, bias, eps=1e-3)
    expected = F.batch_norm(
        conv(x), mean.double(), var.double(), weight.double(), bias.double(), False, 0.0, 1e-3
    )
    assert folded.weight.dtype == torch.float64
    torch.testing.assert_close(folded(x), expected, rtol=1e-10, atol=1e-10)


def test_bn_without_running_stats_is_refused() -> None:
    conv = from_conv(nn.Conv2d(3, 4, 1))
    with pytest.raises(ValueError, match="running statistics"):
        fold_bn(conv, nn.BatchNorm2d(4, track_running_stats=False))


def test_bn_channel_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="4 outputs"):
        fold_bn(from_conv(nn.Conv2d(3, 4, 1)), nn.BatchNorm2d(5))
