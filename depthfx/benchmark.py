"""End-to-end latency of a model on one backend, and interleaved A/B comparisons.

:func:`benchmark` reports a median with its IQR and the fingerprint of what was measured.
:func:`compare` is the one to use for speed-ups: both models are prepared identically on the
same backend (the baseline is the unmerged model optimised by that backend, never eager
PyTorch) and timed in alternating blocks in one process, so a shared CPU drifting between a
fast and a slow state moves both and the paired ratio stays trustworthy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from depthfx.backends.base import Backend, Fingerprint, Runnable, get_backend
from depthfx.backends.timing import BLOCK_S, BLOCKS, WARMUP_S, Timing, interleaved, measure


@dataclass(frozen=True)
class BenchmarkResult:
    """One model's latency on one backend, with the fingerprint of the setting."""

    timing: Timing
    fingerprint: Fingerprint

    @property
    def median_ms(self) -> float:
        return self.timing.median_ms

    @property
    def iqr_ms(self) -> float:
        return self.timing.iqr_ms

    def to_dict(self) -> dict[str, Any]:
        return {**self.timing.to_dict(), "fingerprint": dict(self.fingerprint)}


@dataclass(frozen=True)
class Comparison:
    """Two models timed interleaved; ``speedup`` = median paired a/b ratio (> 1: b faster)."""

    a: BenchmarkResult
    b: BenchmarkResult
    speedup: float
    speedup_iqr: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a.to_dict(),
            "b": self.b.to_dict(),
            "speedup": self.speedup,
            "speedup_iqr": self.speedup_iqr,
        }


def _backend(
    backend: str, device: str, threads: int | None, options: Mapping[str, Any] | None
) -> Backend:
    opts: dict[str, Any] = {"device": device, **(options or {})}
    if backend in ("onnxruntime", "torch"):
        opts.setdefault("threads", threads)
    return get_backend(backend, **opts)


def prepare(
    model: Any,
    example_inputs: Sequence[Any] | None = None,
    *,
    backend: str = "onnxruntime",
    device: str = "cpu",
    threads: int | None = 1,
    backend_options: Mapping[str, Any] | None = None,
) -> Runnable:
    """The runnable :func:`benchmark` would time (useful to check outputs first)."""
    return _backend(backend, device, threads, backend_options).prepare(model, example_inputs)


def benchmark(
    model: Any,
    example_inputs: Sequence[Any] | None = None,
    *,
    backend: str = "onnxruntime",
    device: str = "cpu",
    threads: int | None = 1,
    warmup_s: float = WARMUP_S,
    blocks: int = BLOCKS,
    block_s: float = BLOCK_S,
    backend_options: Mapping[str, Any] | None = None,
) -> BenchmarkResult:
    """Median/IQR latency of ``model`` (module, ModelProto or .onnx path) on ``backend``.

    ``threads`` applies to CPU backends (ONNX Runtime intra-op threads, torch threads);
    ``backend_options`` go to the backend's constructor (e.g. ``{"compile": True}``).
    """
    runnable = prepare(
        model,
        example_inputs,
        backend=backend,
        device=device,
        threads=threads,
        backend_options=backend_options,
    )
    timing = measure(runnable, warmup_s=warmup_s, blocks=blocks, block_s=block_s)
    return BenchmarkResult(timing, runnable.fingerprint)


def compare(
    a: Any,
    b: Any,
    example_inputs: Sequence[Any] | None = None,
    *,
    backend: str = "onnxruntime",
    device: str = "cpu",
    threads: int | None = 1,
    warmup_s: float = WARMUP_S,
    rounds: int = BLOCKS,
    block_s: float = BLOCK_S,
    backend_options: Mapping[str, Any] | None = None,
    force: bool = False,
) -> Comparison:
    """Time ``a`` (baseline) and ``b`` interleaved on the same backend and settings.

    Raises :class:`~depthfx.errors.FingerprintMismatch` if the two runnables were not
    prepared under the same setting (e.g. different input shapes), unless ``force``.
    """
    be = _backend(backend, device, threads, backend_options)
    ra, rb = be.prepare(a, example_inputs), be.prepare(b, example_inputs)
    ra.fingerprint.check_compatible(rb.fingerprint, force=force)
    res = interleaved(ra, rb, rounds=rounds, warmup_s=warmup_s, block_s=block_s)
    return Comparison(
        BenchmarkResult(res.a, ra.fingerprint),
        BenchmarkResult(res.b, rb.fingerprint),
        res.ratio,
        res.ratio_iqr,
    )
