"""AffineConv construction: dilation, "same"/asymmetric padding, padding modes, regrouping."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from depthfx.algebra import AffineConv, conv_padding, from_conv, from_tensors, padding_from_fpad


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize(
    ("kwargs", "size"),
    [
        ({"kernel_size": 3, "padding": 2, "dilation": 2}, (11, 12)),
        ({"kernel_size": (1, 7), "padding": (0, 3), "stride": (2, 1)}, (9, 14)),
        ({"kernel_size": (4, 3), "padding": "same", "dilation": (1, 2)}, (10, 9)),
        ({"kernel_size": 2, "padding": "same"}, (7, 8)),
        ({"kernel_size": 3, "padding": "valid", "groups": 2, "dilation": (2, 1)}, (12, 10)),
    ],
)
def test_from_conv_reproduces_module(kwargs: dict, size: tuple[int, int]) -> None:
    conv = nn.Conv2d(4, 6, **kwargs).double()
    x = torch.randn(2, 4, *size, dtype=torch.float64)
    affine = from_conv(conv)
    torch.testing.assert_close(affine(x), conv(x), rtol=1e-12, atol=1e-12)


def test_dilation_is_materialised() -> None:
    affine = from_conv(nn.Conv2d(2, 2, (3, 2), dilation=(2, 3)))
    assert affine.kernel_size == (5, 4)
    assert affine.weight[:, :, 1].abs().sum() == 0
    assert affine.weight[:, :, :, 1:3].abs().sum() == 0


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_same_padding_puts_the_extra_pixel_bottom_right() -> None:
    assert conv_padding(nn.Conv2d(1, 1, (4, 2), padding="same")) == (1, 2, 0, 1)


def test_extra_padding_from_fpad() -> None:
    conv = nn.Conv2d(3, 5, 3, stride=2).double()
    pad = (0, 1, 2, 1)  # F.pad order: left, right, top, bottom
    x = torch.randn(1, 3, 10, 11, dtype=torch.float64)
    affine = from_conv(conv, extra_padding=padding_from_fpad(pad))
    assert affine.padding == (2, 1, 0, 1)
    torch.testing.assert_close(affine(x), conv(F.pad(x, pad)), rtol=1e-12, atol=1e-12)


def test_from_tensors_defaults_bias_to_zero() -> None:
    affine = from_tensors(torch.randn(4, 2, 3, 3), groups=2, padding=1)
    assert affine.bias.dtype == torch.float64
    assert affine.bias.abs().sum() == 0
    assert affine.padding == (1, 1, 1, 1)


def test_reflect_padding_is_refused() -> None:
    with pytest.raises(ValueError, match="must start a group"):
        from_conv(nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect"))


def test_reflect_mode_without_padding_is_plain() -> None:
    assert from_conv(nn.Conv2d(3, 3, 3, padding_mode="reflect")).padding == (0, 0, 0, 0)


def test_float32_tensors_are_refused() -> None:
    with pytest.raises(TypeError, match="float64"):
        AffineConv(torch.zeros(2, 2, 1, 1), torch.zeros(2))


@pytest.mark.parametrize(("groups", "coarse"), [(4, 2), (4, 1), (6, 3), (8, 8)])
def test_regroup_is_the_same_map(groups: int, coarse: int) -> None:
    conv = nn.Conv2d(24, 48, 3, padding=1, groups=groups).double()
    affine = from_conv(conv)
    regrouped = affine.regroup(coarse)
    assert regrouped.groups == coarse
    x = torch.randn(1, 24, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(regrouped(x), conv(x), rtol=1e-12, atol=1e-12)
