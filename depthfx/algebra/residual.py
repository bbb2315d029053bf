"""Fuse residual additions into the merged body conv (spec §5.4, pitfalls 9 and 14).

Both rules rest on one identity. Write a conv in unpadded input coordinates (x is 0 outside the
image): body(x)[o, p] = Σ_{i,t} W[o,i,t] · x[i, s·p + t − P_top/left] + b[o]. Another conv with the
same stride, S(x)[o, p] = Σ_{i,u} V[o,i,u] · x[i, s·p + u − Q_top/left] + c[o], reads the same
positions shifted by δ = P − Q, so

    body(x) + S(x) = conv with W′ = W + V placed at offset δ = (P_top − Q_top, P_left − Q_left),
                     b′ = b + c,

exactly, whenever V fits inside W at δ (0 ≤ δ, δ + k_S ≤ K per axis) and both outputs have the same
size. The sizes agree for *every* input size iff P_top + P_bottom − K = Q_top + Q_bottom − k_S per
axis (⌊(H + a)/s⌋ = ⌊(H + b)/s⌋ for all H iff a = b), which is what we require.

* **Identity** (y = body(x) + x): S is the 1×1 identity with Q = 0, so the tap is at
  (P_top, P_left) — the kernel centre for symmetric "same" padding, and the right place for
  asymmetric padding — and we need O = I, stride 1, P_top + P_bottom = K − 1 per axis. Under the
  padding-moved convention the body may have lost its padding to the group input; the training
  graph then crops the identity, y = body(x) + x[tap_h : tap_h + H_out, tap_w : tap_w + W_out] of
  the body's padded input, and ``tap`` gives that crop offset explicitly.
* **Projection** (y = body(x) + shortcut(x), e.g. ResNet's 1×1/s2 conv + BN): the general rule.

Groups: the result is gcd(g_body, g_S)-grouped (both partition I and O into contiguous equal
blocks); the identity is depthwise, so a depthwise body stays depthwise and a grouped body stays
grouped with the identity added inside each group.
"""

from __future__ import annotations

from math import gcd

from depthfx.algebra.kernel import AffineConv, Pair


def _add_inside(body: AffineConv, other: AffineConv, offset: Pair) -> AffineConv:
    """body + other with other's kernel added into body's at ``offset`` (checked by callers)."""
    groups = gcd(body.groups, other.groups)
    weight = body.block_weight(groups).clone()
    (oh, ow), (kh, kw) = offset, other.kernel_size
    weight[..., oh : oh + kh, ow : ow + kw] += other.block_weight(groups)
    return AffineConv(
        weight=weight.reshape(body.out_channels, body.in_channels // groups, *body.kernel_size),
        bias=body.bias + other.bias,
        stride=body.stride,
        padding=body.padding,
        groups=groups,
    )


def fuse_identity(body: AffineConv, *, tap: Pair | None = None) -> AffineConv:
    """y = body(x) + x as one conv: the identity is a 1 at kernel tap (P_top, P_left).

    With ``tap`` given, the identity is the body's padded input cropped at ``tap`` (the
    padding-moved training graph), and the body may shrink the map; without it the body must
    preserve the spatial size. Raises ValueError saying why the residual cannot be fused.
    """
    if body.out_channels != body.in_channels:
        raise ValueError(
            f"identity residual cannot be fused: body maps {body.in_channels} channels to "
            f"{body.out_channels}; x + body(x) needs out_channels == in_channels"
        )
    if body.stride != (1, 1):
        raise ValueError(
            f"identity residual cannot be fused: body has overall stride {body.stride}, the "
            "identity needs stride 1"
        )
    (kh, kw), (top, bottom, left, right) = body.kernel_size, body.padding
    if tap is None:
        if top + bottom != kh - 1 or left + right != kw - 1:
            raise ValueError(
                f"identity residual cannot be fused: body with kernel {(kh, kw)} and padding "
                f"(t, b, l, r) = {body.padding} changes the spatial size (needs "
                f"top + bottom = {kh - 1}, left + right = {kw - 1}); pass tap= for a cropped "
                "identity"
            )
        tap = (top, left)
    if not (0 <= tap[0] < kh and 0 <= tap[1] < kw):
        raise ValueError(
            f"identity residual cannot be fused: tap {tap} lies outside the {(kh, kw)} kernel"
        )
    channels = body.in_channels
    identity = AffineConv(
        weight=body.weight.new_ones(channels, 1, 1, 1),
        bias=body.bias.new_zeros(channels),
        groups=channels,
    )
    return _add_inside(body, identity, tap)


def fuse_projection(body: AffineConv, shortcut: AffineConv) -> AffineConv:
    """y = body(x) + shortcut(x) as one conv (shortcut: e.g. a strided 1×1 conv with BN folded).

    The shortcut kernel goes into the body kernel at (P_top − Q_top, P_left − Q_left). Raises
    ValueError saying why when the shapes, strides or kernel placement do not allow it.
    """
    if (shortcut.in_channels, shortcut.out_channels) != (body.in_channels, body.out_channels):
        raise ValueError(
            f"projection cannot be fused: shortcut maps {shortcut.in_channels}→"
            f"{shortcut.out_channels} channels, body maps {body.in_channels}→{body.out_channels}"
        )
    if shortcut.stride != body.stride:
        raise ValueError(
            f"projection cannot be fused: stride mismatch, body stride {body.stride} vs "
            f"shortcut stride {shortcut.stride}"
        )
    (tb, bb, lb, rb), (ts, bs, ls, rs) = body.padding, shortcut.padding
    (kh, kw), (qh, qw) = body.kernel_size, shortcut.kernel_size
    if tb + bb - kh != ts + bs - qh or lb + rb - kw != ls + rs - qw:
        raise ValueError(
            "projection cannot be fused: body (kernel "
            f"{(kh, kw)}, padding {body.padding}) and shortcut (kernel {(qh, qw)}, padding "
            f"{shortcut.padding}) give different output sizes"
        )
    offset = (tb - ts, lb - ls)
    if not (0 <= offset[0] <= kh - qh and 0 <= offset[1] <= kw - qw):
        raise ValueError(
            f"projection cannot be fused: the {(qh, qw)} shortcut kernel at offset {offset} does "
            f"not fit inside the {(kh, kw)} body kernel"
        )
    return _add_inside(body, shortcut, offset)
