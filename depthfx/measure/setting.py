"""The setting a latency table is measured under, and how its entries are timed.

A table's numbers hold for one setting only: backend, device, threads, precision, batch, ...
(:class:`~depthfx.backends.base.Fingerprint`), minus the per-model input shapes, so that one
setting's tables, caches and calibration runs can be checked against each other before any
number is mixed in. :class:`TimingProtocol` is how each entry and calibration run is timed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from depthfx.backends.base import Fingerprint
from depthfx.backends.timing import Timing, measure
from depthfx.errors import TableError
from depthfx.solver import LatencyTable

#: Fingerprint keys that describe one model's inputs, not the setting of the table.
_PER_MODEL_KEYS = ("input_shape",)


@dataclass(frozen=True)
class TimingProtocol:
    """How each entry is timed (short blocks: a table has hundreds of entries)."""

    warmup_s: float = 0.05
    blocks: int = 10
    block_s: float = 0.01
    noise_threshold: float = 0.1
    retries: int = 2
    #: A/B rounds of each calibration plan against the original (whole models: few calls).
    calibration_rounds: int = 30


def time_entry(
    runnable: Callable[[], object], protocol: TimingProtocol, reject_ms: float | None = None
) -> tuple[Timing, bool]:
    """Time one runnable; re-measure while noisy, keeping the steadiest measurement.

    With ``reject_ms``, two calls after a first (warm-up) call are timed first; if even the
    faster is above ``reject_ms`` the block is clearly dominated and those two calls are its
    (coarse) measurement, returned with True, instead of seconds of full protocol.
    """
    if reject_ms is not None:
        quick = measure(runnable, warmup_s=0.0, min_warmup_calls=1, blocks=2, n_per_block=1)
        if min(quick.samples_ms) > reject_ms:
            return quick, True
    best = measure(
        runnable, warmup_s=protocol.warmup_s, blocks=protocol.blocks, block_s=protocol.block_s
    )
    for _ in range(protocol.retries):
        if best.spread <= protocol.noise_threshold:
            break
        again = measure(
            runnable, warmup_s=protocol.warmup_s, blocks=protocol.blocks, block_s=protocol.block_s
        )
        if again.spread < best.spread:
            best = again
    return best, False


def setting_fingerprint(fp: Mapping[str, Any], batch: int | None = None) -> Fingerprint:
    """A runnable's fingerprint without its per-model input shapes: the table's setting."""
    data = {k: v for k, v in fp.items() if k not in _PER_MODEL_KEYS}
    if batch is not None:
        data["batch"] = batch
    return Fingerprint(data)


def check_table(
    table: LatencyTable, fingerprint: Mapping[str, Any], *, force: bool = False
) -> None:
    """Refuse a table measured under another setting than ``fingerprint`` (a runnable's or a
    table's); a table without a fingerprint (e.g. read from a paper CSV) needs ``force``."""
    stored = table.meta.get("fingerprint")
    if stored is None:
        if not force:
            raise TableError(
                f"{table.source}: the latency table has no fingerprint (a CSV?); pass "
                "force=True to use it for this setting anyway"
            )
        return
    setting_fingerprint(stored).check_compatible(setting_fingerprint(fingerprint), force=force)
