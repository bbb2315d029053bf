"""conv∘conv composition against float64 F.conv2d chains on a padding-moved input."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from depthfx.algebra import compose, compose_all, from_conv, group_padding

MovedReference = Callable[..., Tensor]


def _check_chain(
    moved_reference: MovedReference, convs: Sequence[nn.Conv2d], size: tuple[int, int]
) -> None:
    convs = [conv.double() for conv in convs]
    merged = compose_all([from_conv(conv) for conv in convs])
    x = torch.randn(2, convs[0].in_channels, *size, dtype=torch.float64)
    reference = moved_reference(x, convs, group_padding(convs))
    assert merged.padding == group_padding(convs)
    torch.testing.assert_close(merged(x), reference, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("s1", [1, 2, (2, 1), (1, 2)])
@pytest.mark.parametrize("s2", [1, 2, (2, 1)])
def test_strides(moved_reference: MovedReference, s1: int, s2: int) -> None:
    convs = [nn.Conv2d(3, 5, 3, stride=s1, padding=1), nn.Conv2d(5, 4, 3, stride=s2, padding=1)]
    _check_chain(moved_reference, convs, (13, 14))


@pytest.mark.parametrize(("d1", "d2"), [(2, 1), (1, 2), ((2, 1), (1, 2))])
def test_dilation(moved_reference: MovedReference, d1: int, d2: int) -> None:
    convs = [
        nn.Conv2d(3, 4, 3, stride=2, padding=2, dilation=d1),
        nn.Conv2d(4, 4, 3, padding=1, dilation=d2),
    ]
    _check_chain(moved_reference, convs, (17, 15))


@pytest.mark.parametrize(
    ("first", "second", "groups"),
    [
        ((8, 8, 2), (8, 8, 2), 2),  # g=2 ∘ g=2
        ((8, 8, 4), (8, 12, 2), 2),  # g=4 ∘ g=2: gcd
        ((12, 12, 4), (12, 12, 6), 2),  # partitions of 12 into 4 and 6 share 2 blocks
        ((8, 8, 8), (8, 8, 8), 8),  # depthwise ∘ depthwise stays depthwise
        ((8, 8, 8), (8, 6, 1), 1),  # depthwise ∘ pointwise is dense
        ((6, 8, 1), (8, 8, 8), 1),  # dense ∘ depthwise is dense
        ((4, 8, 4), (8, 16, 8), 4),  # depth multiplier (out = 2·in) twice
        ((4, 8, 4), (8, 8, 8), 4),  # depth multiplier ∘ depthwise
        ((1, 8, 1), (8, 8, 8), 1),  # 1-channel dense conv (in == groups == 1) ∘ depthwise
        ((8, 8, 8), (8, 1, 1), 1),  # depthwise ∘ 1-output dense conv
    ],
)
def test_groups(
    moved_reference: MovedReference,
    first: tuple[int, int, int],
    second: tuple[int, int, int],
    groups: int,
) -> None:
    convs = [
        nn.Conv2d(first[0], first[1], 3, stride=2, padding=1, groups=first[2]),
        nn.Conv2d(second[0], second[1], (3, 2), padding=(1, 0), groups=second[2]),
    ]
    _check_chain(moved_reference, convs, (11, 12))
    affines = [from_conv(conv.double()) for conv in convs]
    merged = compose(*affines)
    assert merged.groups == groups
    # The grouped result must be the whole map: the dense composition has exact zeros off-block.
    dense = compose(affines[0].regroup(1), affines[1].regroup(1))
    assert dense.groups == 1
    torch.testing.assert_close(merged.regroup(1).weight, dense.weight, rtol=1e-12, atol=0.0)


def test_non_square_kernels(moved_reference: MovedReference) -> None:
    convs = [
        nn.Conv2d(4, 4, (1, 7), padding=(0, 3)),
        nn.Conv2d(4, 6, (7, 1), padding=(3, 0)),
        nn.Conv2d(6, 6, (3, 1), stride=(2, 1), padding=(1, 0)),
    ]
    merged = compose_all([from_conv(conv) for conv in convs])
    assert merged.kernel_size == (7 + 2, 7)
    _check_chain(moved_reference, convs, (12, 10))


def test_asymmetric_padding(moved_reference: MovedReference) -> None:
    first = nn.Conv2d(3, 4, 2, stride=2).double()  # timm "same" style: pad (0,1,0,1) in front
    second = nn.Conv2d(4, 5, (2, 3), padding="same").double()  # (0, 1, 1, 1)
    affines = [from_conv(first, extra_padding=(0, 1, 1, 0)), from_conv(second)]
    merged = compose_all(affines)
    assert merged.padding == (0 + 2 * 0, 1 + 2 * 1, 1 + 2 * 1, 0 + 2 * 1)
    x = torch.randn(2, 3, 9, 10, dtype=torch.float64)
    reference = moved_reference(x, [first, second], merged.padding)
    torch.testing.assert_close(merged(x), reference, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("bias1", "bias2"), [(True, False), (False, True), (True, True)])
def test_bias_propagation(moved_reference: MovedReference, bias1: bool, bias2: bool) -> None:
    convs = [
        nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=4, bias=bias1),
        nn.Conv2d(8, 6, 3, padding=1, groups=2, bias=bias2),
    ]
    with torch.no_grad():
        for conv in convs:
            if conv.bias is not None:
                conv.bias.normal_(0.0, 3.0)  # large biases so a wrong propagation shows
    _check_chain(moved_reference, convs, (10, 9))


def _random_conv(rng: random.Random, channels: int, stride_budget: int) -> nn.Conv2d:
    kind = rng.choice(["dense", "grouped", "depthwise", "multiplier", "pointwise"])
    out, groups = rng.choice([2, 4, 6]), 1
    if kind == "grouped":
        groups = rng.choice([g for g in (2, 3, 4) if channels % g == 0] or [1])
        out = groups * rng.choice([1, 2])
    elif kind in ("depthwise", "multiplier"):
        groups, out = channels, channels * (2 if kind == "multiplier" else 1)
    kernel = (1, 1) if kind == "pointwise" else (rng.choice([1, 2, 3]), rng.choice([1, 3, 5]))
    stride = tuple(rng.choice([1, 2]) if stride_budget > 1 else 1 for _ in range(2))
    dilation = tuple(rng.choice([1, 1, 2]) for _ in range(2))
    padding = tuple(rng.randint(0, 2) for _ in range(2))
    return nn.Conv2d(
        channels, out, kernel, stride, padding, dilation, groups, bias=rng.random() < 0.5
    )


@pytest.mark.parametrize("seed", range(50))
def test_random_chains(moved_reference: MovedReference, seed: int) -> None:
    rng = random.Random(seed)
    channels, stride_budget, convs = rng.choice([1, 2, 4, 6]), 4, []
    for _ in range(rng.randint(3, 5)):
        conv = _random_conv(rng, channels, stride_budget)
        stride_budget //= max(conv.stride)
        channels = conv.out_channels
        convs.append(conv)
    merged = compose_all([from_conv(conv) for conv in convs])
    kh, kw = merged.kernel_size
    top, bottom, left, right = merged.padding
    size = (max(kh - top - bottom, 1) + rng.randint(0, 5), max(kw - left - right, 1) + 3)
    _check_chain(moved_reference, convs, size)


def test_group_padding_scales_later_pads_by_stride() -> None:
    convs = [
        nn.Conv2d(2, 2, 3, stride=(2, 1), padding=(1, 0)),
        nn.Conv2d(2, 2, 3, stride=2, padding=1),
        nn.Conv2d(2, 2, 3, padding=(2, 1)),
    ]
    assert group_padding(convs) == (1 + 2 + 4 * 2,) * 2 + (0 + 1 + 2 * 1,) * 2


def test_channel_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="expects 5 inputs"):
        compose(from_conv(nn.Conv2d(3, 4, 1)), from_conv(nn.Conv2d(5, 4, 1)))


def test_padding_must_move() -> None:
    """Why moving padding matters: per-conv padding differs at the borders, not inside."""
    first = nn.Conv2d(3, 4, 3, padding=1).double()
    second = nn.Conv2d(4, 4, 3, padding=1).double()
    x = torch.randn(1, 3, 12, 12, dtype=torch.float64)
    naive = second(first(x))  # pads the intermediate map with zeros
    merged = compose(from_conv(first), from_conv(second))
    assert merged.padding == (2, 2, 2, 2)
    out = merged(x)
    assert out.shape == naive.shape
    interior = (slice(None), slice(None), slice(2, -2), slice(2, -2))
    torch.testing.assert_close(out[interior], naive[interior], rtol=1e-10, atol=1e-10)
    border_error = (out - naive).abs().amax(dim=(0, 1))
    assert border_error[0].min() > 1e-3  # the whole top row is wrong (the bias leaks, too)
    assert border_error[interior[2:]].max() < 1e-10
    moved = F.conv2d(F.conv2d(F.pad(x, (2, 2, 2, 2)), first.weight, first.bias), second.weight)
    torch.testing.assert_close(out, moved + second.bias.reshape(1, -1, 1, 1), rtol=1e-10, atol=0.0)


def test_group_padding_refuses_reflect_padding() -> None:
    convs = [nn.Conv2d(2, 2, 3), nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")]
    with pytest.raises(ValueError, match="must start a group"):
        group_padding(convs)
