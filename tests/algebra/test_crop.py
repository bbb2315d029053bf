"""Kernel cropping: exact at the input size it was cropped for, never larger, maximal."""

from __future__ import annotations

import random

import torch
from torch import nn

from depthfx.algebra import (
    AffineConv,
    compose_all,
    compose_cropped,
    crop,
    crop_window,
    from_conv,
    from_tensors,
)
from depthfx.algebra.crop import axis_crop


def _meets_data(kernel: int, stride: int, before: int, after: int, size: int) -> list[bool]:
    """Brute force: tap u meets data iff some output reads a real pixel with it."""
    outputs = (size + before + after - kernel) // stride + 1
    return [
        any(before <= i * stride + u < before + size for i in range(outputs)) for u in range(kernel)
    ]


def test_axis_crop_drops_exactly_the_border_taps_that_meet_no_data() -> None:
    rng = random.Random(0)
    for _ in range(3000):
        k, s, n = rng.randint(1, 40), rng.randint(1, 5), rng.randint(1, 12)
        before, after = rng.randint(0, 25), rng.randint(0, 25)
        if (n + before + after - k) // s + 1 < 1:
            continue
        hits = _meets_data(k, s, before, after, n)
        lead, trail = axis_crop(k, s, before, after, n)
        if not any(hits):
            assert (lead, trail) == (0, 0)
            continue
        assert not any(hits[:lead]) and not any(hits[k - trail :])
        assert hits[lead] and hits[k - 1 - trail]  # maximal: the new border taps meet data
        assert lead <= before and trail <= after


def _random_conv(rng: random.Random, in_channels: int) -> nn.Conv2d:
    groups = rng.choice([g for g in (1, 2, 4) if in_channels % g == 0])
    out = groups * rng.randint(1, 3)
    k = (rng.randint(1, 5), rng.randint(1, 5))
    dilation = (rng.randint(1, 8), rng.randint(1, 8))
    stride = (rng.randint(1, 3), rng.randint(1, 3))
    pad = (rng.randint(0, dilation[0] * k[0]), rng.randint(0, dilation[1] * k[1]))
    return nn.Conv2d(in_channels, out, k, stride, pad, dilation, groups).double()


def _random_maps(rng: random.Random, lengths: tuple[int, ...] = (1, 1, 2, 3)) -> list[AffineConv]:
    """One conv, or a padding-moved chain (large kernels), with extra asymmetric pads."""
    channels = rng.choice([2, 4])
    convs = []
    for _ in range(rng.choice(lengths)):
        convs.append(_random_conv(rng, channels))
        channels = convs[-1].out_channels
    extra = (rng.randint(0, 24), rng.randint(0, 24), rng.randint(0, 24), rng.randint(0, 24))
    return [from_conv(convs[0], extra_padding=extra)] + [from_conv(c) for c in convs[1:]]


def _random_map(rng: random.Random) -> AffineConv:
    return compose_all(_random_maps(rng))


def test_cropped_conv_equals_uncropped_on_inputs_of_that_size() -> None:
    rng = random.Random(1)
    cropped_some = 0
    for _ in range(100):
        conv = _random_map(rng)
        size = (rng.randint(8, rng.choice([16, 64])), rng.randint(8, rng.choice([16, 64])))
        if min(conv.output_size(*size)) < 1:
            continue
        small = crop(conv, size)
        assert small.kernel_size[0] <= conv.kernel_size[0]
        assert small.kernel_size[1] <= conv.kernel_size[1]
        assert small.stride == conv.stride and small.groups == conv.groups
        assert crop_window(conv.kernel_size, conv.stride, conv.padding, size) == (
            small.kernel_size,
            small.padding,
        )
        x = torch.randn(1, conv.in_channels, *size, dtype=torch.float64)
        torch.testing.assert_close(small(x), conv(x), rtol=1e-12, atol=1e-12)
        cropped_some += small is not conv
    assert cropped_some >= 12  # the random cases do exercise the crop


def test_large_merged_kernel_on_a_tiny_map_keeps_its_centre() -> None:
    """Seven 3×3 convs (pad 1) merged: 15×15, padding 7; on a 2×2 map only 3×3 taps remain."""
    weight = torch.randn(4, 4, 15, 15, dtype=torch.float64)
    conv = from_tensors(weight, torch.randn(4), padding=7)
    small = crop(conv, (2, 2))
    assert small.kernel_size == (3, 3) and small.padding == (1, 1, 1, 1)
    torch.testing.assert_close(small.weight, conv.weight[..., 6:9, 6:9])
    x = torch.randn(1, 4, 2, 2, dtype=torch.float64)
    torch.testing.assert_close(small(x), conv(x), rtol=1e-12, atol=1e-12)
    assert crop(conv, (64, 64)) is conv  # nothing meets only padding at 64×64


def test_compose_cropped_equals_crop_of_the_full_composition() -> None:
    """Composing within the kept taps gives the cropped full composition, tap for tap."""
    rng = random.Random(2)
    cropped_some = 0
    for _ in range(60):
        maps = _random_maps(rng, lengths=(2, 3, 4))
        full = compose_all(maps)
        size = (rng.randint(8, 24), rng.randint(8, 24))
        if min(full.output_size(*size)) < 1:
            continue
        want, got = crop(full, size), compose_cropped(maps, size)
        assert (got.kernel_size, got.padding, got.stride, got.groups) == (
            want.kernel_size,
            want.padding,
            want.stride,
            want.groups,
        )
        torch.testing.assert_close(got.weight, want.weight, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got.bias, want.bias, rtol=1e-12, atol=1e-12)
        cropped_some += want is not full
    assert cropped_some >= 10
