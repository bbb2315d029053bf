"""Identity and projection residual fusion against float64 references."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from depthfx.algebra import (
    AffineConv,
    compose_all,
    fold_bn,
    from_conv,
    from_tensors,
    fuse_identity,
    fuse_projection,
    group_padding,
)

MovedReference = Callable[..., Tensor]


def _bn(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels, eps=1e-3).double().eval()
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_(1.0, 0.3)
        bn.bias.normal_()
    return bn


def _conv_bn(conv: nn.Conv2d) -> tuple[nn.Conv2d, nn.BatchNorm2d, AffineConv]:
    conv = conv.double()
    bn = _bn(conv.out_channels)
    return conv, bn, fold_bn(from_conv(conv), bn)


@pytest.mark.parametrize("groups", [1, 2, 8])
def test_identity_symmetric(groups: int) -> None:
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=groups).double()
    fused = fuse_identity(from_conv(conv))
    assert fused.groups == groups  # depthwise stays depthwise, grouped stays grouped
    x = torch.randn(2, 8, 7, 9, dtype=torch.float64)
    torch.testing.assert_close(fused(x), conv(x) + x, rtol=1e-10, atol=1e-10)


def test_identity_asymmetric_padding() -> None:
    """Even kernel with TF "same" padding: the identity tap is (top, left), not the centre."""
    weight = torch.randn(4, 4, 2, 4, dtype=torch.float64)
    body = from_tensors(weight, extra_padding=(0, 1, 2, 1))
    fused = fuse_identity(body)
    x = torch.randn(1, 4, 6, 7, dtype=torch.float64)
    expected = F.conv2d(F.pad(x, (2, 1, 0, 1)), weight) + x
    torch.testing.assert_close(fused(x), expected, rtol=1e-10, atol=1e-10)
    assert fused.weight[0, 0, 0, 2] == weight[0, 0, 0, 2] + 1


def test_identity_around_composed_inverted_residual(moved_reference: MovedReference) -> None:
    """MobileNetV2 block without activations: pw-expand + BN, dw 3×3 + BN, pw-project + BN."""
    parts = [
        _conv_bn(nn.Conv2d(4, 12, 1, bias=False)),
        _conv_bn(nn.Conv2d(12, 12, 3, padding=1, groups=12, bias=False)),
        _conv_bn(nn.Conv2d(12, 4, 1, bias=False)),
    ]
    body = compose_all([affine for _, _, affine in parts])
    fused = fuse_identity(body)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    modules = [m for conv, bn, _ in parts for m in (conv, bn)]
    expected = moved_reference(x, modules, group_padding([c for c, _, _ in parts])) + x
    torch.testing.assert_close(fused(x), expected, rtol=1e-10, atol=1e-10)


def test_identity_with_moved_padding_crops(moved_reference: MovedReference) -> None:
    """Padding moved out of the body: the training graph crops x by the tap (spec §5.1)."""
    convs = [nn.Conv2d(6, 6, 3, groups=6).double(), nn.Conv2d(6, 6, (1, 3)).double()]
    body = compose_all([from_conv(conv) for conv in convs])  # padding 0, kernel 3×5
    with pytest.raises(ValueError, match="changes the spatial size"):
        fuse_identity(body)
    fused = fuse_identity(body, tap=(1, 2))
    x = torch.randn(1, 6, 9, 10, dtype=torch.float64)
    expected = moved_reference(x, convs, (0, 0, 0, 0)) + x[:, :, 1:-1, 2:-2]
    torch.testing.assert_close(fused(x), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "body_convs",
    [
        # ResNet basic block, downsampling in the first 3×3.
        [nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.Conv2d(8, 8, 3, padding=1)],
        # Bottleneck v1.5: stride in the 3×3 (second conv).
        [nn.Conv2d(4, 6, 1), nn.Conv2d(6, 6, 3, stride=2, padding=1), nn.Conv2d(6, 8, 1)],
        # Bottleneck v1: stride in the first 1×1; the 3×3 after it is dilated by the stride.
        [nn.Conv2d(4, 6, 1, stride=2), nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(6, 8, 1)],
    ],
)
@pytest.mark.parametrize("size", [(8, 8), (9, 7)])
def test_projection_resnet_downsample(
    moved_reference: MovedReference, body_convs: list[nn.Conv2d], size: tuple[int, int]
) -> None:
    parts = [_conv_bn(conv) for conv in body_convs]
    body = compose_all([affine for _, _, affine in parts])
    short_conv, short_bn, shortcut = _conv_bn(nn.Conv2d(4, 8, 1, stride=2, bias=False))
    fused = fuse_projection(body, shortcut)
    x = torch.randn(2, 4, *size, dtype=torch.float64)
    modules = [m for conv, bn, _ in parts for m in (conv, bn)]
    expected = moved_reference(x, modules, body.padding) + short_bn(short_conv(x))
    torch.testing.assert_close(fused(x), expected, rtol=1e-10, atol=1e-10)


def test_projection_into_grouped_body() -> None:
    body_conv = nn.Conv2d(4, 8, 3, padding=1, groups=4).double()
    short_conv = nn.Conv2d(4, 8, 1, groups=2).double()
    fused = fuse_projection(from_conv(body_conv), from_conv(short_conv))
    assert fused.groups == 2
    x = torch.randn(1, 4, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(fused(x), body_conv(x) + short_conv(x), rtol=1e-10, atol=1e-10)


def test_identity_refusals() -> None:
    with pytest.raises(ValueError, match="out_channels == in_channels"):
        fuse_identity(from_conv(nn.Conv2d(4, 8, 3, padding=1)))
    with pytest.raises(ValueError, match="stride"):
        fuse_identity(from_conv(nn.Conv2d(4, 4, 3, stride=2, padding=1)))
    with pytest.raises(ValueError, match="outside"):
        fuse_identity(from_conv(nn.Conv2d(4, 4, 3)), tap=(3, 0))


def test_projection_refusals() -> None:
    body = from_conv(nn.Conv2d(4, 8, 3, stride=2, padding=1))
    with pytest.raises(ValueError, match="stride mismatch"):
        fuse_projection(body, from_conv(nn.Conv2d(4, 8, 1)))
    with pytest.raises(ValueError, match="channels"):
        fuse_projection(body, from_conv(nn.Conv2d(4, 6, 1, stride=2)))
    with pytest.raises(ValueError, match="different output sizes"):
        fuse_projection(body, from_conv(nn.Conv2d(4, 8, 1, stride=2, padding=1)))
    with pytest.raises(ValueError, match="does not fit"):
        fuse_projection(body, from_conv(nn.Conv2d(4, 8, 5, stride=2, padding=2)))
