"""Turn an AffineConv back into modules: an optional ``nn.ZeroPad2d`` and an ``nn.Conv2d``.

``nn.Conv2d`` only pads symmetrically, so a padding with top = bottom and left = right goes into
the conv, and any other padding becomes an explicit ``nn.ZeroPad2d((left, right, top, bottom))``
in front of a conv with padding 0. Both compute conv2d(pad(x, P), W, b, stride, groups), the
AffineConv itself. All algebra stays float64; the cast to the target dtype happens here, once.
"""

from __future__ import annotations

import torch
from torch import nn

from depthfx.algebra.kernel import AffineConv


def to_modules(
    conv: AffineConv, dtype: torch.dtype = torch.float32
) -> tuple[nn.ZeroPad2d | None, nn.Conv2d]:
    """(pad, conv) modules computing ``conv`` in ``dtype``; ``pad`` is None when symmetric."""
    top, bottom, left, right = conv.padding
    symmetric = top == bottom and left == right
    module = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=(top, left) if symmetric else 0,
        groups=conv.groups,
        bias=True,
        device=conv.weight.device,
        dtype=dtype,
    )
    with torch.no_grad():
        module.weight.copy_(conv.weight.to(dtype))
        module.bias.copy_(conv.bias.to(dtype))
    pad = None if symmetric else nn.ZeroPad2d((left, right, top, bottom))
    return pad, module
