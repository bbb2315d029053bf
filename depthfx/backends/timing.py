"""The latency harness shared by every backend.

Method (notes/ecosystem.md §5): warm up by time so first-call costs (arena growth, cuDNN or
TensorRT tactic selection, lazy init) are excluded; then time ``blocks`` blocks of K calls,
with K chosen so one block lasts about ``block_s`` (15 ms by default), because single calls of
a small conv are shorter than the clock's useful resolution and one device synchronisation per
call would dominate. The result is the median and the interquartile range of the per-call
times of the blocks: the median ignores the occasional preempted block on a shared machine,
the IQR says how much to trust it. :func:`interleaved` times two models in alternating blocks
(A B A B) in one process, so slow drifts of a shared CPU hit both equally and their paired
ratio stays meaningful even when absolute numbers move.

On a CPU backend running one thread the compute runs on the calling thread, so
:class:`ThreadCpuClock` (that thread's CPU time) is the latency on an idle core, minus the time
the OS gave the core to other processes: measured here, two busy loops on the 2 cores inflate
the wall-clock time of a 4 ms ONNX Runtime conv 4–6× and its thread CPU time by 0–25%, and on
an idle machine the two agree within ~3%. Backends choose it with ``clock="auto"`` (the
default) exactly there; with more threads the work runs in pool threads and only the wall
clock measures latency.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from time import perf_counter, thread_time
from typing import Any, Protocol

from depthfx.errors import DepthFXError

#: Defaults: warm-up seconds, target seconds per block, blocks per measurement.
WARMUP_S = 0.2
BLOCK_S = 0.015
BLOCKS = 20


class BlockClock(Protocol):
    """Times one block of calls; ``stop`` returns seconds since ``start`` once work is done."""

    def start(self) -> None: ...

    def stop(self) -> float: ...


class WallClock:
    """Wall-clock block timer; ``synchronize`` (if any) drains queued device work at both ends."""

    def __init__(self, synchronize: Callable[[], None] | None = None) -> None:
        self._sync = synchronize
        self._t0 = 0.0

    def start(self) -> None:
        if self._sync is not None:
            self._sync()
        self._t0 = perf_counter()

    def stop(self) -> float:
        if self._sync is not None:
            self._sync()
        return perf_counter() - self._t0


class CudaEventClock:
    """CUDA-event block timer: measures device time on ``stream`` without per-call syncs."""

    def __init__(self, stream: Any = None) -> None:
        import torch

        self._stream = stream if stream is not None else torch.cuda.current_stream()
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)

    def start(self) -> None:
        self._start.record(self._stream)

    def stop(self) -> float:
        self._end.record(self._stream)
        self._end.synchronize()
        return self._start.elapsed_time(self._end) / 1e3


class ThreadCpuClock:
    """CPU time of the calling thread (user + system): latency of single-threaded CPU work,
    immune to preemption by other processes (module docstring)."""

    def __init__(self) -> None:
        self._t0 = 0.0

    def start(self) -> None:
        self._t0 = thread_time()

    def stop(self) -> float:
        return thread_time() - self._t0


#: ``clock=`` choices of the CPU backends.
CLOCKS = ("auto", "wall", "cpu")


def cpu_block_clock(clock: str, threads: int | None, device: str = "cpu") -> BlockClock | None:
    """The block clock for a backend's ``clock=`` choice on ``device``: thread CPU time on CPU
    for ``"cpu"``, and for ``"auto"`` when exactly one thread computes; ``None`` (the wall
    clock, or the GPU backend's own) otherwise."""
    if clock not in CLOCKS:
        raise DepthFXError(f"clock must be one of {CLOCKS}, not {clock!r}")
    if device != "cpu":
        if clock == "cpu":
            raise DepthFXError("clock='cpu' times CPU work; GPU runs have their own clock")
        return None
    if clock == "cpu" and threads != 1:
        raise DepthFXError(
            f"clock='cpu' measures one thread; with threads={threads} only the wall clock "
            "measures latency"
        )
    return ThreadCpuClock() if clock == "cpu" or (clock == "auto" and threads == 1) else None


def clock_name(clock: BlockClock | None) -> str:
    """How a runnable is timed, for fingerprints and reports."""
    return {ThreadCpuClock: "thread_cpu", CudaEventClock: "cuda_event"}.get(type(clock), "wall")


@dataclass(frozen=True)
class Timing:
    """Per-call latency of one model: median and IQR over blocks, plus the raw block samples."""

    median_ms: float
    iqr_ms: float
    samples_ms: tuple[float, ...]
    n_per_block: int
    warmup_s: float
    warmup_calls: int

    @property
    def spread(self) -> float:
        """IQR relative to the median (``inf`` for a zero median)."""
        return self.iqr_ms / self.median_ms if self.median_ms > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "samples_ms": list(self.samples_ms)}

    @classmethod
    def from_samples(
        cls, samples_ms: Sequence[float], n_per_block: int, warmup_s: float, warmup_calls: int
    ) -> Timing:
        median, iqr = median_iqr(samples_ms)
        return cls(median, iqr, tuple(samples_ms), n_per_block, warmup_s, warmup_calls)


@dataclass(frozen=True)
class Interleaved:
    """Two models timed in alternating blocks; ``ratio`` = median of paired a/b block ratios.

    ``ratio`` > 1 means b is faster (it is b's speed-up over a); pairing each A block with the
    B block right after it cancels drifts that slow both down together.
    """

    a: Timing
    b: Timing
    ratio: float
    ratio_iqr: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a.to_dict(),
            "b": self.b.to_dict(),
            "ratio": self.ratio,
            "ratio_iqr": self.ratio_iqr,
        }


def _percentile(ordered: Sequence[float], q: float) -> float:
    # Linear interpolation between closest ranks (numpy's default), in pure Python so that
    # importing the harness stays cheap.
    pos = (len(ordered) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def median_iqr(values: Sequence[float]) -> tuple[float, float]:
    """Median and interquartile range (linear-interpolated 25th/75th percentiles)."""
    if not values:
        raise ValueError("no samples")
    ordered = sorted(float(v) for v in values)
    q1, med, q3 = (_percentile(ordered, q) for q in (0.25, 0.5, 0.75))
    return med, q3 - q1


def noisy(timing: Timing, threshold: float = 0.1) -> bool:
    """True if the IQR exceeds ``threshold`` × median: the entry should be re-measured."""
    return timing.spread > threshold


def _clock_for(fn: Callable[[], object], clock: BlockClock | None, synchronize: Any) -> BlockClock:
    # A Runnable carries its own clock and synchronize hook; explicit arguments win.
    clock = clock if clock is not None else getattr(fn, "clock", None)
    if clock is not None:
        return clock
    return WallClock(synchronize if synchronize is not None else getattr(fn, "synchronize", None))


def _run_block(fn: Callable[[], object], n: int, clock: BlockClock) -> float:
    clock.start()
    for _ in range(n):
        fn()
    return clock.stop()


def _warm_up(
    fn: Callable[[], object], clock: BlockClock, warmup_s: float, min_calls: int
) -> tuple[float, int]:
    """Call ``fn`` (one call per clock block) until ``warmup_s`` and ``min_calls`` are reached."""
    t0 = perf_counter()
    calls = 0
    while calls < min_calls or perf_counter() - t0 < warmup_s:
        _run_block(fn, 1, clock)
        calls += 1
    return perf_counter() - t0, calls


def calls_per_block(
    fn: Callable[[], object], clock: BlockClock, block_s: float, max_calls: int = 1_000_000
) -> int:
    """K such that K calls last about ``block_s``: grow a probe block ×2 until it lasts a
    quarter of the target, then scale. One call longer than ``block_s`` gives K = 1."""
    n = 1
    while True:
        t = _run_block(fn, n, clock)
        if t >= block_s / 4 or n >= max_calls:
            break
        n *= 2
    per_call = t / n
    if per_call <= 0:
        return max_calls
    return max(1, min(max_calls, round(block_s / per_call)))


def measure(
    fn: Callable[[], object],
    *,
    warmup_s: float = WARMUP_S,
    min_warmup_calls: int = 3,
    blocks: int = BLOCKS,
    block_s: float = BLOCK_S,
    n_per_block: int | None = None,
    synchronize: Callable[[], None] | None = None,
    clock: BlockClock | None = None,
) -> Timing:
    """Warm up ``fn`` for ``warmup_s``, then time ``blocks`` blocks of K calls (K from
    ``block_s`` unless ``n_per_block`` is given); returns per-call median/IQR in ms."""
    if blocks < 1:
        raise ValueError("blocks must be >= 1")
    clock = _clock_for(fn, clock, synchronize)
    warm_s, warm_calls = _warm_up(fn, clock, warmup_s, min_warmup_calls)
    k = n_per_block or calls_per_block(fn, clock, block_s)
    samples = [_run_block(fn, k, clock) / k * 1e3 for _ in range(blocks)]
    return Timing.from_samples(samples, k, warm_s, warm_calls)


def interleaved(
    a: Callable[[], object],
    b: Callable[[], object],
    *,
    rounds: int = BLOCKS,
    warmup_s: float = WARMUP_S,
    min_warmup_calls: int = 3,
    block_s: float = BLOCK_S,
    clock_a: BlockClock | None = None,
    clock_b: BlockClock | None = None,
) -> Interleaved:
    """Time ``a`` and ``b`` in one process as A B A B … (``rounds`` blocks each)."""
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    ca, cb = _clock_for(a, clock_a, None), _clock_for(b, clock_b, None)
    warm_a = _warm_up(a, ca, warmup_s, min_warmup_calls)
    warm_b = _warm_up(b, cb, warmup_s, min_warmup_calls)
    ka, kb = calls_per_block(a, ca, block_s), calls_per_block(b, cb, block_s)
    sa: list[float] = []
    sb: list[float] = []
    for _ in range(rounds):
        sa.append(_run_block(a, ka, ca) / ka * 1e3)
        sb.append(_run_block(b, kb, cb) / kb * 1e3)
    ratios = [x / y if y > 0 else math.inf for x, y in zip(sa, sb, strict=True)]
    ratio, ratio_iqr = median_iqr(ratios)
    return Interleaved(
        Timing.from_samples(sa, ka, *warm_a),
        Timing.from_samples(sb, kb, *warm_b),
        ratio,
        ratio_iqr,
    )
