"""Emitting modules: padding placement and an fp32 end-to-end round trip."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from depthfx.algebra import compose_all, fold_bn, from_conv, from_tensors, to_modules


def test_symmetric_padding_goes_into_the_conv() -> None:
    pad, conv = to_modules(from_conv(nn.Conv2d(3, 4, (3, 5), padding=(1, 2), groups=1)))
    assert pad is None
    assert conv.padding == (1, 2)
    assert conv.weight.dtype == torch.float32


def test_asymmetric_padding_becomes_zero_pad_in_f_pad_order() -> None:
    affine = from_tensors(torch.randn(6, 1, 2, 3), groups=6, extra_padding=(1, 2, 3, 4))
    pad, conv = to_modules(affine, torch.float64)
    assert isinstance(pad, nn.ZeroPad2d)
    assert pad.padding == (3, 4, 1, 2)  # (left, right, top, bottom)
    assert conv.padding == (0, 0)
    assert conv.groups == 6
    x = torch.randn(1, 6, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(conv(pad(x)), affine(x), rtol=1e-12, atol=1e-12)


def test_fp32_round_trip() -> None:
    """fp32 modules → float64 merge → fp32 modules; |Δ| ≤ 1e-5 · max|ref| (rtol 1e-5)."""
    modules = [
        nn.Conv2d(8, 32, 1, bias=False),
        nn.BatchNorm2d(32, eps=1e-3),
        nn.Conv2d(32, 32, 3, stride=2, groups=32, bias=False),
        nn.BatchNorm2d(32),
        nn.Conv2d(32, 16, 1, bias=False),
        nn.BatchNorm2d(16),
        nn.Conv2d(16, 16, (1, 3)),
    ]
    for module in modules:
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    sequential = nn.Sequential(nn.ZeroPad2d((1, 3, 0, 2)), *modules).eval()  # moved padding
    affines = [from_conv(modules[0], extra_padding=(0, 2, 1, 3))]
    for conv, bn in zip(modules[2::2], modules[1::2], strict=True):
        affines[-1] = fold_bn(affines[-1], bn)
        affines.append(from_conv(conv))
    pad, conv = to_modules(compose_all(affines), torch.float32)
    x = torch.randn(4, 8, 32, 32)
    with torch.no_grad():
        out = conv(pad(x) if pad is not None else x)
        reference = sequential.double()(x.double())
    assert out.dtype == torch.float32
    assert (out.double() - reference).abs().max() <= 1e-5 * reference.abs().max()
    # And the fp32 merged conv is no worse than the original network evaluated in fp32.
    fp32 = nn.Sequential(nn.ZeroPad2d((1, 3, 0, 2)), *modules).float()
    with torch.no_grad():
        assert F.mse_loss(out.double(), reference) < 10 * F.mse_loss(fp32(x).double(), reference)
