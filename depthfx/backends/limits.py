"""What a backend can load: the weight sizes past which a merged conv cannot be built.

A merged kernel grows by s·(k − 1) per conv, so at large inputs a block of MobileNetV2 in
general-stride mode reaches 96→1280 channels at 208×208 taps (20 GiB of float32). Such a
block must be bounded in the latency table, never built, because building it fails or takes
the machine down:

* ONNX: a model is one protobuf message, and protobuf refuses messages of 2 GiB or more
  (``ONNX_PROTOBUF_BYTES``), so the weights of a block graph must stay below that;
* ONNX Runtime's CPU layout transformer (NCHWc) writes each conv's weights again as a new
  initializer, channels padded to its block of 8 or 16 (``OIHWBiBo``: both padded;
  ``OIHWBo`` for fewer than 8 input channels per group: outputs only), and that initializer
  must fit the same limit — seen here: "Initializer 'reorder' declares a size of 2398781440
  bytes which exceeds the 2147483648 byte limit". The estimate pads to 16 and keeps a further
  ``ORT_SAFETY`` of headroom;
* depthfx itself: ``convert`` composes each merge group in float64 and refuses a group whose
  (cropped) kernel, counted dense, exceeds ``MAX_KERNEL_BYTES``, so a plan with such a block
  could not be merged (backend-independent);
* memory: building holds several copies of the weights at once (the array, the ONNX proto,
  its serialised bytes, the session's copy and its reordered copy: ``BUILD_COPIES``), so
  they must fit in ``MEMORY_FRACTION`` of the memory available now (``/proc/meminfo``
  MemAvailable, within a cgroup's limit; ``os.sysconf`` elsewhere), shared by parallel builds.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

ONNX_PROTOBUF_BYTES = 2**31
#: Default limit of ``depthfx.convert`` on one merged float64 kernel, counted dense (O·I·K·8).
MAX_KERNEL_BYTES = 2 << 30
#: Headroom over the padded-weights estimate (other initializers, a larger block size).
ORT_SAFETY = 1.25
#: Channel block the reorder estimate pads to (ORT uses 8 with AVX2, 16 with AVX-512).
ORT_BLOCK = 16
#: Copies of a block's weights alive while it is built (array, proto, bytes, session, reorder).
BUILD_COPIES = 6
#: Share of the available memory that the copies being built may take.
MEMORY_FRACTION = 0.5


def available_memory() -> int | None:
    """Bytes of memory available now (None if the system does not say)."""
    found: list[int] = []
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
        found += [int(ln.split()[1]) * 1024 for ln in lines if ln.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    try:  # a cgroup v2 limit below the machine's memory
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            found.append(max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError, AttributeError):
            return None
    return min(found)


def ort_weight_bytes(out_channels: int, in_per_group: int, kernel: Sequence[int]) -> int:
    """Upper estimate of the float32 bytes of a conv's weights after ORT's NCHWc reorder."""
    padded_out = -(-out_channels // ORT_BLOCK) * ORT_BLOCK
    padded_in = in_per_group if in_per_group < 8 else -(-in_per_group // ORT_BLOCK) * ORT_BLOCK
    return 4 * padded_out * padded_in * math.prod(kernel)


def weight_limit_reason(
    out_channels: int,
    in_channels: int,
    groups: int,
    kernel: Sequence[int],
    *,
    onnx: bool,
    memory: int | None,
    jobs: int = 1,
) -> str | None:
    """Why a merged conv of this shape cannot be built (None if it can): ``onnx`` for the
    ONNX graph limits, ``memory`` the bytes available, shared by ``jobs`` parallel builds."""
    in_per_group = in_channels // groups
    raw = 4 * out_channels * in_per_group * math.prod(kernel)
    dense = 8 * out_channels * in_channels * math.prod(kernel)
    if dense > MAX_KERNEL_BYTES:
        return (
            f"its float64 kernel ({dense / 2**30:.2f} GiB, counted dense) exceeds the "
            f"{MAX_KERNEL_BYTES / 2**30:g} GiB that depthfx.convert merges by default"
        )
    if onnx:
        reordered = ort_weight_bytes(out_channels, in_per_group, kernel)
        if ORT_SAFETY * max(raw, reordered) >= ONNX_PROTOBUF_BYTES:
            return (
                f"{raw / 2**30:.2f} GiB of weights ({reordered / 2**30:.2f} GiB as ONNX "
                f"Runtime reorders them) exceed ONNX's 2 GiB protobuf limit "
                f"(with a {ORT_SAFETY:g}× margin)"
            )
    if memory is not None and BUILD_COPIES * raw * jobs > MEMORY_FRACTION * memory:
        return (
            f"{raw / 2**30:.2f} GiB of weights need about {BUILD_COPIES}× that to build, more "
            f"than {MEMORY_FRACTION:g} of the {memory / 2**30:.1f} GiB available"
            + (f" (shared by {jobs} parallel builds)" if jobs > 1 else "")
        )
    return None
