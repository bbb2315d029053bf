"""Exact float64 weight algebra: BN folding, conv composition, residual fusion.

Everything works on :class:`AffineConv`, a float64 conv map with per-side input padding:

* ``from_conv`` / ``from_tensors``: nn.Conv2d or F.conv2d arguments → AffineConv;
* ``fold_bn`` / ``fold_bn_tensors``: conv → BN as one conv;
* ``compose`` / ``compose_all`` / ``group_padding``: consecutive convs as one conv, padding moved
  to the group input;
* ``fuse_identity`` / ``fuse_projection``: residual additions folded into the body conv;
* ``crop`` / ``compose_cropped``: drop the kernel taps that meet only zero padding at a known
  input size (composing only the taps that stay);
* ``to_modules``: back to (nn.ZeroPad2d | None, nn.Conv2d) in the target dtype;
* ``check_close``: raise MergeMismatch when a merge does not reproduce its reference.
"""

from depthfx.algebra.check import check_close
from depthfx.algebra.compose import compose, compose_all, group_padding, merged_kernel
from depthfx.algebra.crop import compose_cropped, crop, crop_window
from depthfx.algebra.emit import to_modules
from depthfx.algebra.fold_bn import fold_bn, fold_bn_tensors
from depthfx.algebra.kernel import (
    AffineConv,
    Padding4,
    conv_padding,
    from_conv,
    from_tensors,
    padding_from_fpad,
)
from depthfx.algebra.residual import fuse_identity, fuse_projection

__all__ = [
    "AffineConv",
    "Padding4",
    "check_close",
    "compose",
    "compose_all",
    "compose_cropped",
    "conv_padding",
    "crop",
    "crop_window",
    "fold_bn",
    "fold_bn_tensors",
    "from_conv",
    "from_tensors",
    "fuse_identity",
    "fuse_projection",
    "group_padding",
    "merged_kernel",
    "padding_from_fpad",
    "to_modules",
]
