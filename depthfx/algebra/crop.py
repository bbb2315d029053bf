"""Exact kernel cropping: drop the border taps of a conv that only ever multiply zero padding.

A merged kernel grows by s·(k − 1) per conv (spec §7 pitfall 13) and its padding grows with it,
so at small inputs most of a merged kernel only ever sees the padding: a 15×15 kernel with
padding 7 on a 2×2 map reads real pixels with its 3×3 centre only. For an input of known size
those taps contribute exact zeros to every output, so dropping them (and the padding rows they
were reading) computes the same map, with fewer weights, MACs and bytes to load.

Per axis, with input size n, per-side padding (before, after), kernel k and stride s, there are
m = ⌊(n + before + after − k)/s⌋ + 1 outputs and tap u of output i reads padded index i·s + u:
real data iff before ≤ i·s + u < before + n. A tap *meets data* iff that holds for some i. The
leading taps that meet no data are dropped together with as many leading pad rows, the trailing
ones with as many trailing pad rows. That is exact and keeps m unchanged:

* the first tap that meets data, u₀, does so at some i with i·s + u₀ = before (tap u₀ − 1 of
  the same output reads padding), so u₀ ≤ before and the new leading padding is ≥ 0; likewise
  at the end, so the trailing crop never exceeds the trailing padding;
* every remaining tap keeps the input pixel it reads (both its index and the padding shift by
  the same amount), and n + before + after − k is unchanged, hence so is m.

Taps in the middle that meet no data (possible only when s > n) cannot be dropped without
dilation and stay. Stride, per-side (asymmetric) padding and groups are all handled because the
crop is per axis and per side and never touches channels; dilation is already materialised in
an :class:`AffineConv` kernel. A conv none of whose taps meets data (its output is its bias)
is left unchanged. The crop never enlarges a kernel.

:func:`compose_cropped` gives ``crop(compose_all(convs), size)`` without forming the full
kernel, which at small inputs can be hundreds of times larger (MobileNetV2 at 32×32 in
general-stride mode: 427×427 taps in float64, over 2 GiB, for a 32×32 result). Cropping each
partial composition by geometry would not be exact (later convs read the partial map beyond its
own output range, where the moved padding put real values), so it works in kernel offsets:
tap t of conv₂∘conv₁ is Σ_{a + s₁b = t} W₁[a]·W₂[b], so the taps of the result in [lo, hi)
need only the taps of conv₁ in [lo − s₁(k₂ − 1), hi). Each partial kernel is restricted to the
window the final crop needs (widened, where it would cut into the input, to keep its padding
≥ 0), which changes no tap of the result inside the final window.
"""

from __future__ import annotations

from collections.abc import Sequence

from depthfx.algebra.compose import compose, group_padding
from depthfx.algebra.kernel import AffineConv, Padding4

Pair = tuple[int, int]


def axis_crop(kernel: int, stride: int, before: int, after: int, size: int) -> Pair:
    """(leading, trailing) taps of one axis that meet only padding at input ``size``."""
    outputs = (size + before + after - kernel) // stride + 1
    if outputs < 1:
        return (0, 0)

    def meets_data(u: int) -> bool:
        first = max(0, -((u - before) // stride))  # smallest i with i·s + u ≥ before
        return first < outputs and first * stride + u < before + size

    hits = [u for u in range(kernel) if meets_data(u)]
    if not hits:
        return (0, 0)
    return (hits[0], kernel - 1 - hits[-1])


def crop_window(
    kernel: Pair, stride: Pair, padding: Padding4, size: Sequence[int]
) -> tuple[Pair, Padding4]:
    """The cropped (kernel, padding) of a conv at input ``size`` (H, W); padding (t, b, l, r)."""
    top, bottom, left, right = padding
    lead_h, trail_h = axis_crop(kernel[0], stride[0], top, bottom, int(size[0]))
    lead_w, trail_w = axis_crop(kernel[1], stride[1], left, right, int(size[1]))
    return (
        (kernel[0] - lead_h - trail_h, kernel[1] - lead_w - trail_w),
        (top - lead_h, bottom - trail_h, left - lead_w, right - trail_w),
    )


def crop(conv: AffineConv, size: Sequence[int]) -> AffineConv:
    """``conv`` without the taps that meet only padding at input ``size`` (H, W): the same
    output for every input of that size (``conv`` itself when nothing can be dropped)."""
    kernel, padding = crop_window(conv.kernel_size, conv.stride, conv.padding, size)
    if kernel == conv.kernel_size:
        return conv
    lead_h, lead_w = conv.padding[0] - padding[0], conv.padding[2] - padding[2]
    weight = conv.weight[..., lead_h : lead_h + kernel[0], lead_w : lead_w + kernel[1]]
    return AffineConv(weight.contiguous(), conv.bias, conv.stride, padding, conv.groups)


def _window(conv: AffineConv, rows: Pair, cols: Pair) -> AffineConv:
    """``conv``'s taps [lo, hi) per axis, its padding reduced by the taps dropped on each side:
    the same value as ``conv`` at every kernel offset it keeps."""
    (kh, kw), (top, bottom, left, right) = conv.kernel_size, conv.padding
    weight = conv.weight[..., rows[0] : rows[1], cols[0] : cols[1]].contiguous()
    padding = (top - rows[0], bottom - (kh - rows[1]), left - cols[0], right - (kw - cols[1]))
    return AffineConv(weight, conv.bias, conv.stride, padding, conv.groups)


def compose_cropped(convs: Sequence[AffineConv], size: Sequence[int]) -> AffineConv:
    """``crop(compose_all(convs), size)``, composed within the taps it keeps (module doc)."""
    if not convs:
        raise ValueError("compose_cropped needs at least one conv")
    # Kernel size, stride and padding of every prefix composition, from shapes alone.
    kernels, strides = [convs[0].kernel_size], [convs[0].stride]
    for conv in convs[1:]:
        (kh, kw), (sh, sw) = kernels[-1], strides[-1]
        (ch, cw), (th, tw) = conv.kernel_size, conv.stride
        kernels.append((kh + sh * (ch - 1), kw + sw * (cw - 1)))
        strides.append((sh * th, sw * tw))
    paddings = [group_padding(convs[: k + 1]) for k in range(len(convs))]
    cropped, padding = crop_window(kernels[-1], strides[-1], paddings[-1], size)
    # The window [lo, hi) of each prefix kernel, per axis, from the last one backwards.
    windows: list[list[Pair]] = [[(0, 0), (0, 0)] for _ in convs]
    for axis, before in ((0, 0), (1, 2)):
        lo = paddings[-1][before] - padding[before]
        hi = lo + cropped[axis]
        windows[-1][axis] = (lo, hi)
        for k in range(len(convs) - 2, -1, -1):
            reach = strides[k][axis] * (convs[k + 1].kernel_size[axis] - 1)
            full, pad = kernels[k][axis], paddings[k]
            lo = min(max(0, lo - reach), pad[before])
            hi = max(min(full, hi), full - pad[before + 1])
            windows[k][axis] = (lo, hi)
    acc = _window(convs[0], *windows[0])
    for k, conv in enumerate(convs[1:], start=1):
        # acc's offset 0 is offset windows[k - 1].lo of the full prefix kernel.
        acc = compose(acc, conv)
        (lo_h, hi_h), (lo_w, hi_w) = windows[k]
        (base_h, _), (base_w, _) = windows[k - 1]
        acc = _window(acc, (lo_h - base_h, hi_h - base_h), (lo_w - base_w, hi_w - base_w))
    return acc
