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

*In-context calibration* (``calibrate=True``, the default with ``end_to_end``). A block timed
alone is not the same block inside the model: its input and weights sit hot in cache, ONNX
Runtime reorders its input and output between NCHW and its blocked NCHWc layout at the graph
boundary (the whole model pays that once), and thread-pool hand-offs differ. These costs grow
with the block's work, so the raw sum is off by a *factor*, not by a constant (MobileNetV2 at
batch 8: the blocks alone sum to more than the whole model, and no constant outside part can
absorb that). The table therefore measures a few real merged plans end to end, each
interleaved with the original (A B A B, so a shared CPU's drifts hit both), and fits

    calibrated: predicted(plan) = c_fixed + scale · Σ_chains Σ_{merge groups (i, j)} T(i, j)

through the original's point (so a budget fraction of the original means what it says) by
least squares over the plans' points (exact with one plan); ``scale`` must be > 0. The plans
are chosen from the raw table alone: the fastest feasible plan and plans evenly spaced between
it and the original in predicted time, keeping as many activations as they can. The fit lives
in ``meta["calibration"]`` (raw entries and the raw ``fixed_ms`` stay as measured, so the
paper CSV round-trip is unaffected); :func:`latency_model` is what predictions and the DP use.
Because scale > 0, ``c_fixed + scale·ΣT ≤ budget`` ⇔ ``ΣT ≤ (budget − c_fixed)/scale``: the DP
runs on the raw entries with a transformed budget and picks the same plan for a given raw
budget whatever the fit, so re-solving after the fit has nothing to iterate on.

Cost control (MobileNetV2 in general-stride mode has 578 valid blocks, 198 of them with merged
dense kernels over 16 M weights):

* identical block shapes are timed once (shape key; the repeated stages of a network share
  most long blocks);
* a resumable cache keyed by (fingerprint, block shape), written entry by entry atomically;
* *dominated-block bounding*: a block whose merged conv needs so many MACs that even at
  ``bound_safety`` × the best throughput seen on this backend it would be slower than its
  single convs together is never in the fastest merge pattern, which plans deploy (its
  single convs are strictly cheaper), so it is not built (such kernels can be gigabytes); its
  entry holds that lower bound instead and is listed in ``meta["bounded"]``. The paper's DP1
  cannot always split a block into its single convs (only where every prefix is a valid
  block, spec §7.16), so DP2 may still cost a bounded block at its bound: the plan then
  deploys the faster single convs, within the budget;
* ``jobs`` > 1 builds models/sessions/engines in threads ahead of the timer (timing itself
  stays sequential: concurrent timing would measure contention);
* noisy entries (IQR/median above ``noise_threshold``) are re-measured up to ``retries``
  times, keeping the steadiest measurement.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from depthfx.backends.base import Backend, Fingerprint, Runnable, get_backend
from depthfx.backends.timing import Timing, measure
from depthfx.errors import DepthFXError, TableError
from depthfx.measure.block_shapes import BlockSpec, ConvShape, block_spec
from depthfx.measure.cache import TimingCache
from depthfx.solver.dp import BUDGET_UNITS
from depthfx.solver.tables import LatencyKey

if TYPE_CHECKING:
    from depthfx.plans import Plan
    from depthfx.records import Analysis
    from depthfx.solver.tables import ImportanceTable, LatencyTable


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


def load_table(path: str | Path) -> LatencyTable:
    """A latency table from ``.json`` (with meta/fingerprint) or the paper's ``.csv``."""
    from depthfx.solver.tables import LatencyTable

    path = Path(path)
    if path.suffix == ".csv":
        return LatencyTable.read_csv(path)
    return LatencyTable.read_json(path)


def _time(
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
) -> LatencyTable:
    """Time every valid block of every chain of ``model`` on ``backend``; see the module doc.

    ``batch`` replaces the example inputs' batch size. ``analysis`` reuses an existing
    :func:`depthfx.analyze` result (it must match ``example_inputs``). ``cache_dir`` makes the
    build resumable. ``bound=False`` times every block, however large. ``progress=None``
    shows a bar only on a terminal. ``expect``: a fingerprint the setting must match (checked
    before any block is timed, e.g. that of a table about to be overwritten). With
    ``end_to_end``, ``calibrate`` fits the in-context calibration on ``calibration_plans``
    real plans (module doc); ``calibrate=False`` keeps the raw additive model.
    """
    from tqdm.auto import tqdm

    from depthfx.passes.analyze import analyze
    from depthfx.solver.tables import LatencyTable

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

    peak = 0.0  # best MACs per ms seen on this setting
    if bound:
        probe_key = probe_spec.key()
        timing = lookup(probe_key) or _time(probe, protocol)[0]
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
                timing, rough = _time(runnable, protocol, reject)
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
        "bound_safety": bound_safety if bound else None,
        "peak_gmacs_per_s": peak / 1e6 if bound else None,
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
            et, meta["calibration"] = _calibration(
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


def chain_indices(table: LatencyTable) -> dict[tuple[str, ...], int]:
    """Table chain index by the chain's conv node names (from ``meta["chains"]``)."""
    chains = table.meta.get("chains")
    if not chains:
        raise TableError(
            f"{table.source}: the table does not record its chains (meta['chains']); it was "
            "not measured by depthfx.LatencyTable.measure"
        )
    return {tuple(c["convs"]): int(c["index"]) for c in chains}


def predict_ms(table: LatencyTable, plan: Plan) -> float:
    """The table's prediction for ``plan`` (:func:`latency_model`: calibrated when the table
    has a fit, else raw); chains the plan leaves out count with their original configuration."""
    return latency_model(table).predict(chain_ms(table, plan))


def chain_ms(table: LatencyTable, plan: Plan) -> float:
    """Σ_chains Σ_{merge groups (i, j)} T(i, j): the raw table time of ``plan``'s chains;
    chains the plan leaves out count with their original configuration (single convs)."""
    index = chain_indices(table)
    groups: dict[int, list[tuple[int, int]]] = {
        c: [(p - 1, p) for p in range(1, table.lengths[c] + 1)] for c in index.values()
    }
    for cp in plan.chains:
        if cp.convs not in index:
            raise TableError(
                f"{table.source}: the plan's chain starting at {cp.convs[0]!r} is not in the "
                "table (was it measured for another model or strided/exclude setting?)"
            )
        groups[index[cp.convs]] = cp.groups()
    total = 0.0
    for c, blocks in groups.items():
        for i, j in blocks:
            if (c, i, j) not in table.times:
                raise TableError(f"{table.source}: no entry for block ({c}, {i}, {j})")
            total += table.times[c, i, j]
    if not math.isfinite(total):
        raise TableError(f"{table.source}: predicted latency is not finite")
    return total


# ----------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class LatencyModel:
    """How a table turns the raw time of a plan's chains into milliseconds:
    ``fixed_ms + scale · chain_ms`` (module doc). ``end_to_end_ms`` is the original's measured
    latency that a budget fraction refers to; the model predicts exactly that for it."""

    end_to_end_ms: float
    fixed_ms: float
    scale: float
    calibrated: bool

    def predict(self, chain_ms: float) -> float:
        return self.fixed_ms + self.scale * chain_ms

    def chain_budget(self, budget_ms: float) -> float:
        """The raw chain time (table units) that a latency of ``budget_ms`` allows."""
        return (budget_ms - self.fixed_ms) / self.scale


def latency_model(table: LatencyTable) -> LatencyModel:
    """The calibrated model when ``meta["calibration"]`` holds a fit, else the raw one
    (scale 1, ``meta["fixed_ms"]``)."""
    meta = table.meta
    cal = meta.get("calibration")
    if isinstance(cal, Mapping) and cal.get("status") == "fitted":
        try:
            model = LatencyModel(
                float(meta["end_to_end_ms"]), float(cal["fixed_ms"]), float(cal["scale"]), True
            )
        except (KeyError, TypeError, ValueError) as err:
            raise TableError(f"{table.source}: malformed meta['calibration'] ({err!r})") from None
        if not (math.isfinite(model.fixed_ms) and math.isfinite(model.scale) and model.scale > 0):
            raise TableError(
                f"{table.source}: meta['calibration'] has scale={model.scale!r}, "
                f"fixed_ms={model.fixed_ms!r}; expected a finite fit with scale > 0"
            )
        return model
    if "fixed_ms" not in meta or "end_to_end_ms" not in meta:
        raise TableError(
            f"{table.source}: no end_to_end_ms/fixed_ms in meta (measured without end_to_end, "
            "or read from the paper's CSV format)"
        )
    return LatencyModel(float(meta["end_to_end_ms"]), float(meta["fixed_ms"]), 1.0, False)


def fit_calibration(
    original: tuple[float, float], points: Sequence[tuple[float, float]]
) -> tuple[float, float]:
    """(fixed_ms, scale) of ``measured = fixed_ms + scale · chain_ms`` through the original's
    point ``(chain_ms, measured_ms)``, least squares over ``points`` (exact for one point).

    Raises :class:`~depthfx.errors.TableError` when the fit is degenerate: no point differs
    from the original in chain time (nothing to fit a slope on), or the slope is not > 0
    (measured latency does not fall with predicted latency: timings too noisy to trust).
    """
    x0, y0 = original
    if not points:
        raise TableError("calibration: no plan was measured besides the original")
    dx = [x - x0 for x, _ in points]
    dy = [y - y0 for _, y in points]
    sxx = sum(d * d for d in dx)
    if sxx <= (1e-9 * max(abs(x0), 1e-12)) ** 2:
        raise TableError(
            "calibration: every calibration plan has the original's table time "
            f"({x0:.6g}); no slope can be fitted (nothing in the chains can be merged?)"
        )
    scale = sum(a * b for a, b in zip(dx, dy, strict=True)) / sxx
    if not (math.isfinite(scale) and scale > 0):
        shown = ", ".join(f"({x:.4g}, {y:.4g})" for x, y in points)
        raise TableError(
            f"calibration: fitted scale {scale:.4g} is not > 0: the plans' measured latencies "
            f"do not fall with their table times (original ({x0:.4g}, {y0:.4g}) ms, plans "
            f"{shown}); the timings are too noisy (a busy machine?)"
        )
    return y0 - scale * x0, scale


def activation_importance(analysis: Analysis) -> ImportanceTable:
    """A latency-only importance: −(original activations an extended block removes), so the
    DP keeps as many activations as the budget allows (calibration plans, benchmarks)."""
    from depthfx.solver.tables import ImportanceTable

    entries = {}
    for chain in analysis.chains:
        acts = chain.default_acts
        for st, end, st_act, end_act in chain.extended_blocks():
            removed = sum(1 for p in range(st + 1, end) if p in acts)
            removed += int(end in acts and not end_act)
            entries[chain.index, st, end, st_act, end_act] = -float(removed)
    return ImportanceTable.from_entries(entries, norm="none")


#: Integer latency units the DP gets for the calibration plans' chain budgets.


def calibration_plans_for(analysis: Analysis, table: LatencyTable, n: int) -> list[Plan]:
    """``n`` plans spanning the table's range: the fastest feasible plan, then plans at chain
    budgets evenly spaced between it and the original's, each keeping as many activations as
    the budget allows (:func:`activation_importance`). Duplicates are dropped."""
    from depthfx.errors import InfeasibleBudget
    from depthfx.plans import Plan, solution_chains
    from depthfx.solver.dp import solve

    if n < 1:
        raise DepthFXError(f"calibration_plans must be >= 1, got {n}")
    imp = activation_importance(analysis)
    original = _original_chain_ms(table)
    prec = BUDGET_UNITS / original
    try:  # DP2 reports the smallest feasible chain budget when a zero budget does not fit
        fastest = solve(table, imp, 0.0, prec=prec).time
    except InfeasibleBudget as err:
        fastest = err.minimum
    plans: list[Plan] = []
    for k in range(n):
        solution = solve(table, imp, fastest + k / n * (original - fastest), prec=prec, warn=False)
        plan = Plan.for_analysis(analysis, solution_chains(analysis, solution))
        if plan not in plans:
            plans.append(plan)
    return plans


def _original_chain_ms(table: LatencyTable) -> float:
    """Σ T(p − 1, p) over every chain: the unmerged chains' time in table units."""
    return sum(
        table.times[c, p - 1, p]
        for c, length in table.lengths.items()
        for p in range(1, length + 1)
    )


def _architecture_key(model: nn.Module, inputs: Sequence[torch.Tensor]) -> str:
    """What identifies a model's end-to-end timing under one setting: its parameter and buffer
    shapes (by name) and the input shapes."""
    shapes = [(name, list(t.shape)) for name, t in model.state_dict().items()]
    return json.dumps({"state": shapes, "inputs": [list(x.shape) for x in inputs]})


def _calibration(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    table: LatencyTable,
    plans: Sequence[Plan],
    backend: Backend,
    original: Runnable,
    protocol: TimingProtocol,
    cache: TimingCache | None,
    table_fp: Fingerprint,
    force: bool,
) -> tuple[Timing, dict[str, Any]]:
    """Measure each plan interleaved with the original and fit; returns the original's timing
    (its blocks over all runs) and the fit's description for ``meta["calibration"]``.

    Each plan's point is in the original's time base: ``anchor / r`` with ``r`` the median of
    the paired original/plan block ratios of its run, ``anchor`` the median of the original's
    blocks over all runs; paired ratios survive a CPU that drifts between runs. A degenerate
    fit is recorded (``status``: "failed", with the reason) and warned about; predictions then
    use the raw model. Each run is cached (resumable, and a rebuilt table gets the same fit)."""
    t_start = time.perf_counter()
    arch = hashlib.sha256(_architecture_key(model, inputs).encode()).hexdigest()[:24]
    base: list[Timing] = []
    runs: list[dict[str, Any]] = []
    skipped: list[str] = []
    for plan in plans:
        key = json.dumps(
            {
                "calibration": arch,
                "plan": [[list(c.act_pos), list(c.merge_pos)] for c in plan.chains],
            }
        )
        keys = (key + "#original", key + "#plan")
        hits = [cache.get(k) for k in keys] if cache is not None else [None, None]
        if hits[0] is not None and hits[1] is not None:
            a, b = hits[0][0], hits[1][0]
        else:
            try:
                a, b = _measure_plan(
                    model, inputs, plan, backend, original, protocol, table_fp, force
                )
            except DepthFXError as err:  # e.g. a merged kernel over max_kernel_bytes
                skipped.append(str(err))
                continue
            if cache is not None:
                cache.put(keys[1], b)
                cache.put(keys[0], a)
        ratios = [x / y for x, y in zip(a.samples_ms, b.samples_ms, strict=True)]
        base.append(a)
        runs.append(
            {
                "chain_ms": chain_ms(table, plan),
                "ratio": statistics.median(ratios),
                "original_ms": a.median_ms,
                "plan_ms": b.median_ms,
                "plan_iqr_ms": b.iqr_ms,
                "plan": [
                    {"act_pos": list(c.act_pos), "merge_pos": list(c.merge_pos)}
                    for c in plan.chains
                ],
            }
        )
    if not base:
        reason = f"no calibration plan could be merged ({'; '.join(skipped)})"
        warnings.warn(
            f"{reason}; predictions use the raw additive model", RuntimeWarning, stacklevel=3
        )
        timing = measure(original, warmup_s=max(0.2, protocol.warmup_s), blocks=2 * protocol.blocks)
        return timing, {"status": "failed", "reason": reason, "skipped": skipped}
    pooled = Timing.from_samples(
        [x for t in base for x in t.samples_ms],
        base[0].n_per_block,
        sum(t.warmup_s for t in base),
        sum(t.warmup_calls for t in base),
    )
    anchor = pooled.median_ms
    for run in runs:
        run["measured_ms"] = anchor / run["ratio"]
    x0 = _original_chain_ms(table)
    doc: dict[str, Any] = {
        "model": "measured = fixed_ms + scale * chain_ms, through (original_chain_ms, "
        "end_to_end_ms)",
        "original_chain_ms": x0,
        "points": runs,
        "rounds": protocol.calibration_rounds,
        "skipped": skipped,
        "seconds": time.perf_counter() - t_start,
    }
    try:
        fixed, scale = fit_calibration(
            (x0, anchor), [(r["chain_ms"], r["measured_ms"]) for r in runs]
        )
    except TableError as err:
        warnings.warn(
            f"{err}; predictions use the raw additive model", RuntimeWarning, stacklevel=3
        )
        return pooled, {**doc, "status": "failed", "reason": str(err)}
    residuals = [r["measured_ms"] - (fixed + scale * r["chain_ms"]) for r in runs]
    return pooled, {
        **doc,
        "status": "fitted",
        "fixed_ms": fixed,
        "scale": scale,
        "residuals_ms": residuals,
    }


def _measure_plan(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    plan: Plan,
    backend: Backend,
    original: Runnable,
    protocol: TimingProtocol,
    table_fp: Fingerprint,
    force: bool,
) -> tuple[Timing, Timing]:
    """(original, merged plan) timed A B A B: ``plan`` merged exactly as a user would get it
    (prepare → convert, verified) and prepared by the table's backend at its setting."""
    from depthfx.backends.timing import interleaved
    from depthfx.passes.convert import convert
    from depthfx.passes.prepare import prepare

    merged = convert(prepare(model, plan, inputs), plan, inputs)
    runnable = backend.prepare(merged, inputs)
    setting_fingerprint(runnable.fingerprint).check_compatible(table_fp, force=force)
    res = interleaved(
        original, runnable, rounds=protocol.calibration_rounds, warmup_s=max(0.2, protocol.warmup_s)
    )
    return res.a, res.b


def describe_calibration(table: LatencyTable) -> str:
    """One line on the table's latency model, for CLI output and reports."""
    cal = table.meta.get("calibration")
    if not isinstance(cal, Mapping):
        return "raw additive model (no in-context calibration)"
    if cal.get("status") != "fitted":
        return f"raw additive model (calibration failed: {cal.get('reason')})"
    pts = ", ".join(f"{p['chain_ms']:.3f}→{p['measured_ms']:.3f}" for p in cal.get("points", ()))
    return (
        f"{cal['fixed_ms']:.4g} ms + {cal['scale']:.4f} × Σ T  (original "
        f"{cal['original_chain_ms']:.3f}→{table.meta['end_to_end_ms']:.3f} ms; plans {pts} ms)"
    )
