"""The timing harness, on a fake clock: statistics, block sizing, interleaving."""

from __future__ import annotations

import math

import pytest

from depthfx.backends import timing
from depthfx.backends.timing import Timing, interleaved, measure, median_iqr, noisy


class FakeClock:
    """A perf_counter that only moves when a fake model runs."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(timing, "perf_counter", fake)
    return fake


def test_median_iqr_math() -> None:
    assert median_iqr([1.0, 2.0, 3.0, 4.0, 100.0]) == (3.0, 2.0)
    assert median_iqr([5.0]) == (5.0, 0.0)
    med, iqr = median_iqr([1.0, 2.0, 3.0, 4.0])
    assert med == 2.5
    assert iqr == pytest.approx(1.5)  # 3.25 - 1.75
    with pytest.raises(ValueError):
        median_iqr([])


def test_measure_sizes_blocks_and_reports_per_call_ms(clock: FakeClock) -> None:
    calls = 0

    def model() -> None:  # 1 ms per call
        nonlocal calls
        calls += 1
        clock.now += 1e-3

    t = measure(model, warmup_s=0.05, blocks=7, block_s=0.015)
    assert t.n_per_block == 15  # 15 ms block / 1 ms per call
    assert len(t.samples_ms) == 7
    assert t.median_ms == pytest.approx(1.0)
    assert t.iqr_ms == pytest.approx(0.0, abs=1e-9)
    assert t.warmup_calls == 50  # 50 ms of warm-up at 1 ms per call
    assert t.warmup_s == pytest.approx(0.05)
    # warm-up 50 + probes 1+2+4 + 7 blocks × 15
    assert calls == 50 + 7 + 7 * 15


def test_slow_call_gets_one_per_block_and_min_warmup_calls(clock: FakeClock) -> None:
    def slow() -> None:
        clock.now += 0.1

    t = measure(slow, warmup_s=0.0, min_warmup_calls=2, blocks=3)
    assert t.n_per_block == 1
    assert t.warmup_calls == 2
    assert t.median_ms == pytest.approx(100.0)


def test_median_ignores_an_outlier_block_and_noisy_flags_spread(clock: FakeClock) -> None:
    durations = iter([1e-3] * 100 + [50e-3] + [1e-3] * 1000)

    def model() -> None:
        clock.now += next(durations)

    t = measure(model, warmup_s=0.0, min_warmup_calls=1, blocks=5, n_per_block=20)
    assert t.median_ms == pytest.approx(1.0)
    assert max(t.samples_ms) > 3.0  # the block that contains the 50 ms hiccup
    assert not noisy(t, 0.1)
    spread = Timing.from_samples([1.0, 1.0, 2.0, 3.0, 3.0], 1, 0.0, 0)
    assert spread.spread == pytest.approx(1.0)
    assert noisy(spread, 0.5)
    assert not noisy(spread, 1.5)
    assert math.isinf(Timing.from_samples([0.0], 1, 0.0, 0).spread)


def test_synchronize_hook_brackets_every_block(clock: FakeClock) -> None:
    events: list[str] = []

    def model() -> None:
        events.append("call")
        clock.now += 1e-3

    measure(
        model,
        warmup_s=0.0,
        min_warmup_calls=1,
        blocks=2,
        n_per_block=3,
        synchronize=lambda: events.append("sync"),
    )
    # warm-up block of 1, then 2 blocks of 3; each block is sync … sync
    assert events == ["sync", "call", "sync"] + (["sync"] + ["call"] * 3 + ["sync"]) * 2


def test_interleaved_alternates_and_pairs_ratios(clock: FakeClock) -> None:
    order: list[str] = []

    def make(tag: str, seconds: float):
        def run() -> None:
            order.append(tag)
            clock.now += seconds

        return run

    res = interleaved(make("a", 2e-3), make("b", 1e-3), rounds=4, warmup_s=0.0, block_s=0.004)
    assert res.a.n_per_block == 2
    assert res.b.n_per_block == 4
    timed = order[-4 * (2 + 4) :]
    assert timed == (["a"] * 2 + ["b"] * 4) * 4
    assert res.a.median_ms == pytest.approx(2.0)
    assert res.b.median_ms == pytest.approx(1.0)
    assert res.ratio == pytest.approx(2.0)
    assert res.ratio_iqr == pytest.approx(0.0, abs=1e-9)
    assert res.to_dict()["ratio"] == pytest.approx(2.0)


def test_measure_real_clock_positive() -> None:
    t = measure(lambda: sum(range(100)), warmup_s=0.01, blocks=3, block_s=0.002)
    assert t.median_ms > 0
    assert math.isfinite(t.iqr_ms)


def test_thread_cpu_clock_ignores_time_the_thread_does_not_compute() -> None:
    """Sleeping stands for being descheduled: the wall clock counts it, thread CPU time not."""
    import time

    def nap() -> None:
        time.sleep(0.02)

    def spin() -> None:
        t0 = time.thread_time()
        while time.thread_time() - t0 < 0.01:
            pass

    cpu = timing.ThreadCpuClock()
    assert measure(nap, warmup_s=0, blocks=3, n_per_block=1, clock=cpu).median_ms < 5
    assert measure(nap, warmup_s=0, blocks=3, n_per_block=1).median_ms >= 19
    assert measure(spin, warmup_s=0, blocks=3, n_per_block=1, clock=cpu).median_ms >= 9.5


@pytest.mark.parametrize(
    ("choice", "threads", "expected"),
    [("auto", 1, "thread_cpu"), ("auto", 2, "wall"), ("wall", 1, "wall"), ("cpu", 1, "thread_cpu")],
)
def test_cpu_block_clock_choice(choice: str, threads: int, expected: str) -> None:
    assert timing.clock_name(timing.cpu_block_clock(choice, threads)) == expected


def test_cpu_block_clock_rejects_bad_choices() -> None:
    from depthfx.errors import DepthFXError

    with pytest.raises(DepthFXError, match="one thread"):
        timing.cpu_block_clock("cpu", 2)
    with pytest.raises(DepthFXError, match="clock must be one of"):
        timing.cpu_block_clock("tsc", 1)
    with pytest.raises(DepthFXError, match="times CPU work"):
        timing.cpu_block_clock("cpu", 1, "cuda")
    assert timing.cpu_block_clock("auto", 1, "cuda") is None  # the GPU backend's own clock
