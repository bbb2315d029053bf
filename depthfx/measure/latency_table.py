"""Measure a :class:`~depthfx.solver.LatencyTable` on a real backend (spec §2.3, notes §5).

One entry per valid block of every chain: the block's merged conv (+ explicit residual add)
+ the activation after it, at the block's true input shape (:mod:`depthfx.measure.block_shapes`),
built the way the final model is exported (tiny ONNX graphs for ONNX Runtime, modules for the
torch and TensorRT backends) and timed with the shared harness (median/IQR over blocks).

The table also carries, in ``meta``, the end-to-end latency of the original model exported and
optimised by the same backend (``end_to_end_ms``; with calibration, the original's blocks of
all calibration runs pooled) and the part outside the chains (``fixed_ms``), so that the
original configuration is predicted exactly by the raw model:

    raw:        predicted(plan) = fixed_ms + Σ_chains Σ_{merge groups (i, j)} T(i, j)
                fixed_ms        = end_to_end_ms − Σ_chains Σ_p T(p − 1, p)

Every entry is net of the backend's per-call overhead (``call_overhead_ms``: the median time
of a trivial one-op model on the same backend and setting). Timed alone, each block pays that
overhead once; inside the model it is paid once per inference, so it belongs to ``fixed_ms``.

With ``calibrate=True`` (the default with ``end_to_end``) the table also measures a few real
merged plans in context and fits the latency model to them (:mod:`depthfx.measure.calibration`);
:mod:`depthfx.measure.prediction` turns a table and a plan into milliseconds.

Cost control (MobileNetV2 in general-stride mode has 578 valid blocks, 198 of them with merged
dense kernels over 16 M weights):

* identical block shapes are timed once (shape key; the repeated stages of a network share
  most long blocks);
* a resumable cache keyed by (fingerprint, block shape), written entry by entry atomically;
* *dominated-block bounding*: a block whose merged conv needs so many MACs that even at
  ``bound_safety`` × the best throughput seen on this backend it would be slower than its
  single convs together is never in the fastest merge pattern, which plans deploy (its
  single convs are strictly cheaper), so it is not built (such kernels can be gigabytes); its
  entry holds that lower bound instead and is listed in ``meta["bounded"]``. A block whose
  (cropped) weights cannot be loaded or merged at all (:mod:`depthfx.backends.limits`:
  ONNX's 2 GiB, ``convert``'s float64 limit, a share of the free memory) is bounded too,
  always, at twice its single convs at least, and listed with the reason in
  ``meta["oversized"]``. The paper's DP1
  cannot always split a block into its single convs (only where every prefix is a valid
  block, spec §7.16), so DP2 may still cost a bounded block at its bound: the plan then
  deploys the faster single convs, within the budget;
* ``jobs`` > 1 builds models/sessions/engines in threads ahead of the timer (timing itself
  stays sequential: concurrent timing would measure contention);
* noisy entries (IQR/median above ``noise_threshold``) are re-measured up to ``retries``
  times, keeping the steadiest measurement.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from depthfx.backends.base import Backend, Fingerprint, Runnable, get_backend
from depthfx.backends.limits import available_memory
from depthfx.backends.timing import Timing, measure
from depthfx.errors import DepthFXError
from depthfx.measure.block_shapes import BlockSpec, ConvShape, block_spec
from depthfx.measure.cache import TimingCache
from depthfx.measure.calibration import calibration_plans_for, run_calibration
from depthfx.measure.setting import TimingProtocol, setting_fingerprint, time_entry
from depthfx.passes.analyze import analyze
from depthfx.records import Analysis
from depthfx.solver import LatencyKey, LatencyTable


def load_table(path: str | Path) -> LatencyTable:
    """A latency table from ``.json`` (with meta/fingerprint) or the paper's ``.csv``."""
    path = Path(path)
    if path.suffix == ".csv":
        return LatencyTable.read_csv(path)
    return LatencyTable.read_json(path)


def _backend(
    backend: str | Backend, device: str, threads: int | None, options: Mapping[str, Any] | None
) -> Backend:
    if not isinstance(backend, str):
        return backend
    opts: dict[str, Any] = {"device": device, **(options or {})}
    if backend in ("onnxruntime", "torch"):
        opts.setdefault("threads", threads)
    return get_backend(backend, **opts)


def _with_batch(inputs: Sequence[torch.Tensor], batch: int | None) -> tuple[torch.Tensor, ...]:
    if batch is None:
        return tuple(inputs)
    if batch < 1:
        raise DepthFXError(f"batch must be >= 1, got {batch}")
    return tuple(x[:1].expand(batch, *x.shape[1:]).contiguous() for x in inputs)


class _Builder:
    """Builds the backend runnable of a block spec (ONNX for ONNX Runtime, else a module)."""

    def __init__(self, backend: Backend, table_fp: Fingerprint | None, force: bool) -> None:
        self.backend = backend
        self.onnx = getattr(backend, "name", "") == "onnxruntime"
        self.table_fp = table_fp
        self.force = force

    def __call__(self, spec: BlockSpec) -> Runnable:
        model: Any = spec.onnx_model() if self.onnx else spec.torch_module()
        runnable = self.backend.prepare(model, spec.inputs())
        if self.table_fp is not None:
            setting_fingerprint(runnable.fingerprint).check_compatible(
                self.table_fp, force=self.force
            )
        return runnable


#: A dense 3×3 conv, 256 channels at 14×14: a well-shaped GEMM that calibrates the backend's
#: throughput (MACs/ms) for the dominated-block bound, and gives the setting's fingerprint.
def _probe(batch: int) -> BlockSpec:
    return BlockSpec(
        ConvShape(256, 256, (3, 3), (1, 1), (1, 1, 1, 1), 1), (batch, 256, 14, 14), None
    )


@dataclass
class _Work:
    """Blocks grouped by identical shape."""

    specs: dict[LatencyKey, BlockSpec]
    members: dict[str, list[LatencyKey]]
    by_key: dict[str, BlockSpec]

    @classmethod
    def of(cls, analysis: Analysis, batch: int) -> _Work:
        nodes = {n.name: n for n in analysis.graph_module.graph.nodes}
        specs: dict[LatencyKey, BlockSpec] = {}
        members: dict[str, list[LatencyKey]] = {}
        by_key: dict[str, BlockSpec] = {}
        for chain in analysis.chains:
            for i, j in chain.valid_blocks():
                spec = block_spec(chain, i, j, batch=batch, graph_nodes=nodes)
                specs[chain.index, i, j] = spec
                key = spec.key()
                members.setdefault(key, []).append((chain.index, i, j))
                by_key.setdefault(key, spec)
        return cls(specs, members, by_key)

    def tiers(self) -> list[list[str]]:
        """Unique keys by the shortest block using them (singles first: the bound needs them)."""
        tiers: dict[int, list[str]] = {}
        for key, blocks in self.members.items():
            tiers.setdefault(min(e - s for _, s, e in blocks), []).append(key)
        return [tiers[n] for n in sorted(tiers)]


def measure_latency_table(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    backend: str | Backend = "onnxruntime",
    device: str = "cpu",
    threads: int | None = 1,
    batch: int | None = None,
    strided: str = "general",
    exclude: Sequence[str] = (),
    min_convs: int = 1,
    analysis: Analysis | None = None,
    cache_dir: str | Path | None = None,
    jobs: int = 1,
    protocol: TimingProtocol | None = None,
    bound: bool = True,
    bound_safety: float = 2.0,
    end_to_end: bool = True,
    calibrate: bool = True,
    calibration_plans: int = 2,
    backend_options: Mapping[str, Any] | None = None,
    force: bool = False,
    expect: Mapping[str, Any] | None = None,
    progress: bool | None = None,
    executor: str = "serial",
    executor_options: Mapping[str, Any] | None = None,
) -> LatencyTable:
    """Time every valid block of every chain of ``model`` on ``backend``; see the module doc.

    ``batch`` replaces the example inputs' batch size. ``analysis`` reuses an existing
    :func:`depthfx.analyze` result (it must match ``example_inputs``). ``cache_dir`` makes the
    build resumable. ``bound=False`` times every block the backend can load, however slow.
    ``progress=None`` shows a bar only on a terminal. ``expect``: a fingerprint the setting
    must match (checked before any block is timed, e.g. that of a table about to be
    overwritten). With
    ``end_to_end``, ``calibrate`` fits the in-context calibration on ``calibration_plans``
    real plans (module doc); ``calibrate=False`` keeps the raw additive model.
    ``executor="ray"`` with ``executor_options={"resources": {"<node label>": 1}}`` runs all of
    it as one Ray task on that node (:mod:`depthfx.measure.remote_latency`).
    """
    if executor != "serial":
        options = dict(locals())  # exactly the arguments here: the task gets them as given
        for name in ("model", "example_inputs", "executor", "executor_options"):
            del options[name]
        from depthfx.measure.remote_latency import measure_remotely

        return measure_remotely(
            measure_latency_table, model, example_inputs, options, executor, executor_options
        )
    t_start = time.perf_counter()
    protocol = protocol or TimingProtocol()
    if jobs < 1:
        raise DepthFXError(f"jobs must be >= 1, got {jobs}")
    inputs = _with_batch(
        [example_inputs] if isinstance(example_inputs, torch.Tensor) else example_inputs, batch
    )
    n = inputs[0].shape[0]
    if analysis is None:
        analysis = analyze(model, inputs, strided=strided, exclude=exclude, min_convs=min_convs)  # type: ignore[arg-type]
    if not analysis.chains:
        raise DepthFXError(f"{type(model).__name__} has no conv chain to build a table for")
    work = _Work.of(analysis, n)
    be = _backend(backend, device, threads, backend_options)

    probe_spec = _probe(n)
    probe = _Builder(be, None, force)(probe_spec)
    table_fp = setting_fingerprint(probe.fingerprint, n)
    if expect is not None:
        setting_fingerprint(expect).check_compatible(table_fp, force=force)
    build = _Builder(be, table_fp, force)
    cache = TimingCache(cache_dir, table_fp, force=force) if cache_dir is not None else None

    timings: dict[str, Timing] = {}
    cached = 0

    coarse: set[str] = set()

    def lookup(key: str) -> Timing | None:
        nonlocal cached
        hit = cache.get(key) if cache is not None else None
        if hit is not None:
            timings[key] = hit[0]
            if hit[1]:
                coarse.add(key)
            cached += 1
        return hit[0] if hit is not None else None

    def record(key: str, timing: Timing, rough: bool = False) -> None:
        timings[key] = timing
        if rough:
            coarse.add(key)
        if cache is not None:
            cache.put(key, timing, coarse=rough)

    memory = available_memory()  # blocks the backend cannot load are bounded, never built
    oversized = {
        k: why
        for k, spec in work.by_key.items()
        if (why := spec.unbuildable(onnx=build.onnx, memory=memory, jobs=jobs)) is not None
    }
    peak = 0.0  # best MACs per ms seen on this setting
    if bound or oversized:
        probe_key = probe_spec.key()
        timing = lookup(probe_key) or time_entry(probe, protocol)[0]
        record(probe_key, timing)
        peak = probe_spec.macs() / timing.median_ms
    del probe

    bounded: dict[str, float] = {}
    bar = tqdm(
        total=len(work.by_key),
        desc="latency table",
        unit="block",
        disable=None if progress is None else not progress,
    )
    pool = ThreadPoolExecutor(max_workers=jobs) if jobs > 1 else None
    try:
        for tier in work.tiers():
            todo: list[str] = []
            for key in tier:
                if key in timings or lookup(key) is not None:
                    bar.update(1)
                    continue
                if key in oversized:  # at least its MAC bound, and slower than its singles
                    singles = _singles(key, work, timings)
                    lower = work.by_key[key].macs() / (peak * bound_safety)
                    bounded[key] = lower if singles is None else max(lower, 2 * singles)
                    bar.update(1)
                    continue
                singles = _singles(key, work, timings) if bound else None
                lower = work.by_key[key].macs() / (peak * bound_safety) if peak > 0 else 0.0
                if singles is not None and lower > singles:
                    bounded[key] = lower
                    bar.update(1)
                    continue
                todo.append(key)
            if bound:
                todo = _reject_by_proxy(todo, work, timings, build, bound_safety, bounded)
            for key, runnable in _built(todo, work.by_key, build, pool, jobs):
                singles = _singles(key, work, timings) if bound else None
                reject = None if singles is None else bound_safety * singles
                timing, rough = time_entry(runnable, protocol, reject)
                del runnable
                record(key, timing, rough)
                peak = max(peak, work.by_key[key].macs() / timing.median_ms)
                bar.set_postfix_str(work.by_key[key].describe()[:48], refresh=False)
                bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)

    overhead = _call_overhead(be, n, protocol, cache)
    times: dict[LatencyKey, tuple[float, float]] = {}
    blocks_meta: dict[str, Any] = {}
    for blk, spec in work.specs.items():
        key = spec.key()
        if key in bounded:
            times[blk] = (bounded[key], 0.0)
        else:
            t = timings[key]
            net = max(t.median_ms - overhead, MIN_NET_FRACTION * t.median_ms)
            times[blk] = (net, statistics.pstdev(t.samples_ms))
        blocks_meta[",".join(map(str, blk))] = {
            "activation": spec.activation[0] if spec.activation else None,
            "residual": None
            if spec.residual is None
            else ("projection" if spec.residual.shortcut is not None else "identity"),
            "shape": spec.describe(),
            "iqr_ms": None if key in bounded else timings[key].iqr_ms,
            "bounded": key in bounded,
            "coarse": key in coarse,
        }

    original = sum(
        times[c.index, p - 1, p][0] for c in analysis.chains for p in range(1, c.num_convs + 1)
    )
    meta: dict[str, Any] = {
        "fingerprint": dict(table_fp),
        "model": type(model).__name__,
        "input_shapes": [list(x.shape) for x in inputs],
        "batch": n,
        "strided": analysis.options["strided"],
        "exclude": list(analysis.options["exclude"]),
        "chains": [
            {"index": c.index, "num_convs": c.num_convs, "convs": [cv.node for cv in c.convs]}
            for c in analysis.chains
        ],
        "protocol": asdict(protocol),
        "stdev": "population std of the per-block (per-call) times; iqr_ms in meta.blocks",
        "original_chain_ms": original,
        "call_overhead_ms": overhead,
        "prediction": "fixed_ms + sum over chains of T(i, j) over the plan's merge groups",
        "blocks": blocks_meta,
        "bounded": sorted(",".join(map(str, b)) for k in bounded for b in work.members[k]),
        "coarse": sorted(",".join(map(str, b)) for k in coarse for b in work.members[k]),
        "oversized": {
            ",".join(map(str, b)): oversized[k] for k in oversized for b in work.members[k]
        },
        "bound_safety": bound_safety if bound else None,
        "peak_gmacs_per_s": peak / 1e6 if peak > 0 else None,
        "unique_shapes": len(work.by_key),
        "timed_now": len(timings) - cached,
        "from_cache": cached,
    }
    table = LatencyTable.from_entries(times, meta=meta)
    if end_to_end:
        e2e = be.prepare(model, inputs)
        setting_fingerprint(e2e.fingerprint).check_compatible(table_fp, force=force)
        if calibrate:
            # The original's blocks of every A/B run, pooled: its end-to-end latency.
            plans = calibration_plans_for(analysis, table, calibration_plans)
            et, meta["calibration"] = run_calibration(
                model, inputs, table, plans, be, e2e, protocol, cache, table_fp, force
            )
        else:
            et = measure(e2e, warmup_s=max(0.2, protocol.warmup_s), blocks=2 * protocol.blocks)
        meta.update(
            end_to_end_ms=et.median_ms,
            end_to_end_iqr_ms=et.iqr_ms,
            fixed_ms=et.median_ms - original,
        )
    meta["build_s"] = time.perf_counter() - t_start
    return LatencyTable.from_entries(times, meta=meta)


#: A block's net time never drops below this fraction of its measured time.
MIN_NET_FRACTION = 0.05


def _call_overhead(
    backend: Backend, batch: int, protocol: TimingProtocol, cache: TimingCache | None
) -> float:
    """Median time (ms) of one call of a trivial model (a ReLU on a 1×1×1×1 tensor per batch
    element): what every timed block pays once for being run on its own. Cached like a block,
    so a resumed build gives the same net times."""
    key = json.dumps({"call_overhead": batch})
    hit = cache.get(key) if cache is not None else None
    if hit is not None:
        return hit[0].median_ms
    runnable = backend.prepare(nn.ReLU(), (torch.zeros(batch, 1, 1, 1),))
    timing = measure(
        runnable, warmup_s=protocol.warmup_s, blocks=protocol.blocks, block_s=protocol.block_s
    )
    if cache is not None:
        cache.put(key, timing)
    return timing.median_ms


def _singles(key: str, work: _Work, timings: Mapping[str, Timing]) -> float | None:
    """Max over the blocks of shape ``key`` of the sum of their single convs' times (an upper
    bound on their T_opt); None for single convs or when a single is not timed yet."""
    worst = None
    for c, s, e in work.members[key]:
        if e - s == 1:
            return None
        total = 0.0
        for p in range(s + 1, e + 1):
            t = timings.get(work.specs[c, p - 1, p].key())
            if t is None:
                return None
            total += t.median_ms
        worst = total if worst is None else max(worst, total)
    return worst


#: Weights above which a block is first timed as a channel-reduced proxy (see _reject_by_proxy).
PROXY_WEIGHTS = 1 << 20


def _reject_by_proxy(
    keys: list[str],
    work: _Work,
    timings: Mapping[str, Timing],
    build: _Builder,
    margin: float,
    bounded: dict[str, float],
) -> list[str]:
    """Bound huge merged convs cheaply: time a proxy with fewer output channels (a fraction
    of the work, built in a fraction of the time); if even the proxy is ``margin`` × slower
    than the block's single convs, its time is a measured lower bound that already loses to
    the split. Returns the keys that still need a full measurement."""
    rest = []
    for key in keys:
        singles = _singles(key, work, timings)
        proxy = work.by_key[key].proxy(PROXY_WEIGHTS)
        if singles is None or proxy is None:
            rest.append(key)
            continue
        quick = measure(build(proxy), warmup_s=0.0, min_warmup_calls=1, blocks=2, n_per_block=1)
        if min(quick.samples_ms) > margin * singles:
            bounded[key] = min(quick.samples_ms)
        else:
            rest.append(key)
    return rest


def _built(
    keys: list[str],
    specs: Mapping[str, BlockSpec],
    build: _Builder,
    pool: ThreadPoolExecutor | None,
    jobs: int,
) -> Iterable[tuple[str, Runnable]]:
    """(key, runnable) in order; with a pool, up to ``jobs`` builds run ahead of the timer."""
    if pool is None:
        for key in keys:
            yield key, build(specs[key])
        return
    pending: deque[tuple[str, Future[Runnable]]] = deque()
    it = iter(keys)
    for key in it:
        pending.append((key, pool.submit(build, specs[key])))
        if len(pending) >= jobs:
            break
    while pending:
        key, fut = pending.popleft()
        nxt = next(it, None)
        if nxt is not None:
            pending.append((nxt, pool.submit(build, specs[nxt])))
        yield key, fut.result()
