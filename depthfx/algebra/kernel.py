"""A convolution as a value: the float64 linear map every merge rule works on.

An :class:`AffineConv` is the map

    y = conv2d(pad(x, P), W, b, stride=s, groups=g, dilation=1)

in PyTorch's conventions (cross-correlation, NCHW), with W ∈ ℝ^{O × I/g × kh × kw}, b ∈ ℝ^O and
P = (top, bottom, left, right) the zero padding applied to the *input* of the map.

Every zero-padded ``nn.Conv2d`` is one, exactly:

* dilation d is materialised into the kernel: tap (u, v) moves to (d_h·u, d_w·v) of a zero kernel
  of size d(k − 1) + 1, which computes the same sums (spec §7 pitfall 7), so every AffineConv has
  dilation 1;
* ``padding="same"`` is split per side as PyTorch does: total d(k − 1), ⌊total/2⌋ on the top/left
  and the rest on the bottom/right; an explicit ``F.pad``/``nn.ZeroPad2d``/timm ``Conv2dSame``
  padding in front of the conv is added per side;
* non-zero padding modes (reflect, replicate, circular) are not zero padding and cannot be moved
  (pitfall 10); they are refused unless the conv pads nothing.

Values are float64 so that the algebra built on this type (BN folding, composition, residual
fusion) is exact up to float64 round-off (~1e-16 relative), far below the fp32 round-off of the
network the result is cast back to.

Grouped weights: output channels and input channels are both split into ``groups`` contiguous,
equal blocks and block r of the output only reads block r of the input. :meth:`AffineConv.regroup`
re-expresses the same map with fewer, coarser groups (block-diagonal expansion); ``regroup(1)``
is the dense weight.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Padding4 = tuple[int, int, int, int]
"""Per-side zero padding in the order (top, bottom, left, right)."""

Pair = tuple[int, int]


@dataclass(frozen=True, eq=False)
class AffineConv:
    """y = conv2d(pad(x, padding), weight, bias, stride, groups) in float64, dilation 1.

    ``padding`` is (top, bottom, left, right); ``weight`` is [O, I/groups, kh, kw] float64 and
    ``bias`` is [O] float64.
    """

    weight: Tensor
    bias: Tensor
    stride: Pair = (1, 1)
    padding: Padding4 = (0, 0, 0, 0)
    groups: int = 1

    def __post_init__(self) -> None:
        if self.weight.dtype != torch.float64 or self.bias.dtype != torch.float64:
            raise TypeError(
                f"AffineConv holds float64 tensors, got weight {self.weight.dtype} and bias "
                f"{self.bias.dtype}; build it with from_conv/from_tensors"
            )
        if self.weight.dim() != 4:
            raise ValueError(f"weight must be [O, I/groups, kh, kw], got {list(self.weight.shape)}")
        out_channels = self.weight.shape[0]
        if self.groups < 1 or out_channels % self.groups:
            raise ValueError(f"groups={self.groups} does not divide out_channels={out_channels}")
        if tuple(self.bias.shape) != (out_channels,):
            raise ValueError(f"bias must be [{out_channels}], got {tuple(self.bias.shape)}")
        if len(self.stride) != 2 or min(self.stride) < 1:
            raise ValueError(f"stride must be two positive ints, got {self.stride}")
        if len(self.padding) != 4 or min(self.padding) < 0:
            raise ValueError(f"padding must be 4 non-negative ints (t,b,l,r), got {self.padding}")

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1] * self.groups

    @property
    def kernel_size(self) -> Pair:
        return (self.weight.shape[2], self.weight.shape[3])

    def output_size(self, height: int, width: int) -> Pair:
        """Spatial size of the output for an input of ``height × width``."""
        top, bottom, left, right = self.padding
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        return ((height + top + bottom - kh) // sh + 1, (width + left + right - kw) // sw + 1)

    def __call__(self, x: Tensor) -> Tensor:
        """Apply the map to ``x`` (NCHW) in float64."""
        top, bottom, left, right = self.padding
        padded = F.pad(x.to(torch.float64), (left, right, top, bottom))
        return F.conv2d(padded, self.weight, self.bias, self.stride, groups=self.groups)

    def block_weight(self, groups: int) -> Tensor:
        """The weight as ``groups`` dense diagonal blocks, [groups, O/groups, I/groups, kh, kw].

        ``groups`` must divide ``self.groups``; each coarse block holds self.groups/groups fine
        blocks on its diagonal and exact zeros elsewhere.
        """
        if groups < 1 or self.groups % groups:
            raise ValueError(f"cannot coarsen {self.groups} groups into {groups}")
        fine = self.groups // groups
        out_channels, i_fine, kh, kw = self.weight.shape
        o_fine = out_channels // self.groups
        fine_blocks = self.weight.reshape(groups, fine, o_fine, i_fine, kh, kw)
        blocks = self.weight.new_zeros(groups, fine, o_fine, fine, i_fine, kh, kw)
        # diagonal(dim1=1, dim2=3) is a view [groups, o_fine, i_fine, kh, kw, fine].
        blocks.diagonal(dim1=1, dim2=3).copy_(fine_blocks.permute(0, 2, 3, 4, 5, 1))
        return blocks.reshape(groups, self.out_channels // groups, fine * i_fine, kh, kw)

    def regroup(self, groups: int) -> AffineConv:
        """The same map expressed with ``groups`` coarser groups (``regroup(1)`` is dense)."""
        weight = self.block_weight(groups).reshape(
            self.out_channels, self.in_channels // groups, *self.kernel_size
        )
        return AffineConv(weight, self.bias, self.stride, self.padding, groups)


def _pair(value: int | Sequence[int], name: str) -> Pair:
    if isinstance(value, int):
        return (value, value)
    if len(value) != 2:
        raise ValueError(f"{name} must be an int or a pair, got {value!r}")
    return (int(value[0]), int(value[1]))


def padding_from_fpad(pad: Sequence[int]) -> Padding4:
    """Convert ``F.pad``/``nn.ZeroPad2d`` order (left, right[, top, bottom]) to (t, b, l, r)."""
    if len(pad) == 2:
        pad = (*pad, 0, 0)
    if len(pad) != 4 or min(pad) < 0:
        raise ValueError(f"expected 2 or 4 non-negative pads (left, right, top, bottom), got {pad}")
    left, right, top, bottom = (int(p) for p in pad)
    return (top, bottom, left, right)


def _resolve_padding(
    padding: str | int | Sequence[int], kernel: Pair, dilation: Pair, stride: Pair
) -> Padding4:
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        if stride != (1, 1):
            raise ValueError("padding='same' needs stride 1 (PyTorch refuses it otherwise)")
        sides = []
        for k, d in zip(kernel, dilation, strict=True):
            total = d * (k - 1)
            sides += [total // 2, total - total // 2]
        return (sides[0], sides[1], sides[2], sides[3])
    if isinstance(padding, str):
        raise ValueError(f"unknown padding {padding!r}")
    ph, pw = _pair(padding, "padding")
    return (ph, ph, pw, pw)


def conv_padding(conv: nn.Conv2d) -> Padding4:
    """Per-side zero padding (t, b, l, r) of ``conv``, resolving ``"same"``/``"valid"``.

    Raises ValueError for a non-zero ``padding_mode`` that actually pads: such padding is not a
    zero padding, so it can neither be moved nor merged, and the conv must start a group with
    nothing folded into its input padding (spec §7 pitfall 10).
    """
    weight_shape = conv.weight.shape
    padding = _resolve_padding(
        conv.padding,
        (weight_shape[2], weight_shape[3]),
        _pair(conv.dilation, "dilation"),
        _pair(conv.stride, "stride"),
    )
    if conv.padding_mode != "zeros" and any(padding):
        raise ValueError(
            f"conv with padding_mode={conv.padding_mode!r} and padding {padding} cannot be "
            "merged exactly: only zero padding can be moved; the conv must start a group and be "
            "kept unmerged"
        )
    return padding


def from_tensors(
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: str | int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    extra_padding: Padding4 = (0, 0, 0, 0),
) -> AffineConv:
    """An AffineConv from ``F.conv2d`` arguments, plus an explicit per-side pad (t, b, l, r).

    Dilation is materialised into the kernel; ``padding`` follows ``F.conv2d`` (int, pair,
    ``"same"`` or ``"valid"``).
    """
    stride2, dilation2 = _pair(stride, "stride"), _pair(dilation, "dilation")
    w = weight.detach().to(torch.float64, copy=True)
    out_channels, in_per_group, kh, kw = w.shape
    own = _resolve_padding(padding, (kh, kw), dilation2, stride2)
    if dilation2 != (1, 1):
        dh, dw = dilation2
        dilated = w.new_zeros(out_channels, in_per_group, dh * (kh - 1) + 1, dw * (kw - 1) + 1)
        dilated[:, :, ::dh, ::dw] = w
        w = dilated
    b = w.new_zeros(out_channels) if bias is None else bias.detach().to(torch.float64, copy=True)
    total = tuple(p + q for p, q in zip(own, extra_padding, strict=True))
    return AffineConv(w, b, stride2, (total[0], total[1], total[2], total[3]), groups)


def from_conv(conv: nn.Conv2d, extra_padding: Padding4 = (0, 0, 0, 0)) -> AffineConv:
    """An AffineConv computing ``conv`` (after an optional explicit zero pad, (t, b, l, r)).

    Raises ValueError for a non-zero ``padding_mode`` that pads (see :func:`conv_padding`).
    """
    padding = conv_padding(conv)
    total = tuple(p + q for p, q in zip(padding, extra_padding, strict=True))
    return from_tensors(
        conv.weight,
        conv.bias,
        conv.stride,
        0,
        conv.dilation,
        conv.groups,
        (total[0], total[1], total[2], total[3]),
    )
