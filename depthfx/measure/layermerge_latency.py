"""Time the LayerMerge variants of a real model's blocks: a :class:`LayerMergeLatencyTable`.

One row per variant (:func:`~depthfx.measure.layermerge_variants.chain_variants`): the merged
conv of the block's *kept* convs, with the block's explicit residual add and the activation at
its end, at the block's real input shape (spec §7.2: the original timed every ResNet row at
2× H and W and always appended ReLU). The spec is the block's own
:func:`~depthfx.measure.block_shapes.block_spec` with its conv replaced by the variant's, so the
keep-all variant *is* the ICML'23 entry of the block: with the same ``cache_dir`` as
:func:`~depthfx.measure.latency_table.measure_latency_table` those are not timed again, and
both tables are on one footing for the combined DP (spec §7.19).

Times are net of the backend's per-call overhead like the ICML'23 table (a trivial ReLU model
timed once, cached). Cost control, the ICML'23 table's (its module doc) adapted to variants:

* identical variant shapes are timed once, and the block cache is shared with the ICML'23 table;
* variants whose merged kernel exceeds ``max_weights`` are not built (such kernels can be
  gigabytes and are never fast): left out, listed in ``meta["skipped"]``;
* *dominated-variant bounding*: variants are timed by kept count, so every single-conv block
  is timed before any variant keeping two or more convs. A variant whose MAC lower bound (its
  MACs at ``bound_safety`` × the best throughput seen on this setting, the probe's included) is
  already above the summed times of its kept convs as single-conv blocks is never built, and
  one whose first two calls already take ``bound_safety`` × that sum keeps those two calls as
  its (coarse) time, listed in ``meta["coarse"]``. Variants keeping one conv are never bounded,
  and a variant already in the cache (timed by the ICML'23 table or an earlier run) is used.

A bounded variant is **left out** of the table (listed in ``meta["bounded"]``), not costed at
its bound: unlike the ICML'23 table's T_opt, whose bounded blocks the deployed plan splits into
its faster single convs, a chosen LayerMerge variant is deployed merged, so any cost below its
true time could make a plan miss its budget, and a safe (upper) cost needs the measurement the
bound avoids. Leaving it out keeps every plan within its budget, and removes only options slower
than their kept convs run one by one; what it can cost is objective at loose budgets where the
DP would have paid for that slow variant's importance (the combined DP keeps the ICML'23 rows).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from depthfx.backends.base import Backend, Runnable, get_backend
from depthfx.backends.timing import Timing
from depthfx.errors import DepthFXError
from depthfx.measure.block_shapes import BlockSpec, ConvShape, block_spec
from depthfx.measure.cache import TimingCache
from depthfx.measure.layermerge_variants import BlockVariant, chain_variants
from depthfx.measure.setting import TimingProtocol, setting_fingerprint, time_entry
from depthfx.passes.analyze import analyze
from depthfx.records import Analysis
from depthfx.solver.layermerge_tables import LayerMergeLatencyTable, ShapeKey

#: Variants with more merged-kernel weights than this are not built (see the module doc).
MAX_WEIGHTS = 1 << 24
#: A net time is never below this fraction of the raw one (the ICML'23 table's floor).
MIN_NET_FRACTION = 0.05


def variant_spec(variant: BlockVariant, block: BlockSpec) -> BlockSpec:
    """The block's spec with its merged conv replaced by the variant's (same in/out shape)."""
    spec = dataclasses.replace(block, conv=variant.shape)
    if spec.output_shape != block.output_shape:
        raise DepthFXError(
            f"chain {variant.chain} block ({variant.st}, {variant.end}) keeping {variant.kept}: "
            f"merged conv gives {spec.output_shape}, the block gives {block.output_shape}"
        )
    return spec


def shape_key(variant: BlockVariant) -> ShapeKey:
    """The original's row key: (st, end, ker, str, is_dw), ker/str the first axis (spec §2.2)."""
    c = variant.shape
    dw = c.groups == c.in_channels == c.out_channels and c.groups > 1
    return variant.st, variant.end, c.kernel[0], c.stride[0], dw


def measure_layermerge_latency(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    chain: int = 0,
    backend: str | Backend = "onnxruntime",
    device: str = "cpu",
    threads: int | None = 1,
    analysis: Analysis | None = None,
    cache_dir: str | Path | None = None,
    protocol: TimingProtocol | None = None,
    max_weights: int = MAX_WEIGHTS,
    bound: bool = True,
    bound_safety: float = 2.0,
    backend_options: Mapping[str, Any] | None = None,
    force: bool = False,
    progress: bool | None = None,
) -> LayerMergeLatencyTable:
    """Time the LayerMerge variants of chain ``chain`` of ``model``; see the module doc.

    ``bound=False`` times every variant up to ``max_weights``, however slow. ``progress=None``
    shows a bar only on a terminal.
    """
    t_start = time.perf_counter()
    protocol = protocol or TimingProtocol()
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else example_inputs
    inputs = tuple(inputs)
    if analysis is None:
        analysis = analyze(model, inputs)  # type: ignore[arg-type]
    chains = {c.index: c for c in analysis.chains}
    if chain not in chains:
        raise DepthFXError(f"{type(model).__name__} has no chain {chain} (has {sorted(chains)})")
    the_chain = chains[chain]
    n = inputs[0].shape[0]
    be = backend
    if isinstance(be, str):
        opts: dict[str, Any] = {"device": device, **(backend_options or {})}
        if be in ("onnxruntime", "torch"):
            opts.setdefault("threads", threads)
        be = get_backend(be, **opts)
    onnx = getattr(be, "name", "") == "onnxruntime"

    def build(spec: BlockSpec) -> Runnable:
        return be.prepare(spec.onnx_model() if onnx else spec.torch_module(), spec.inputs())

    # The same probe as the ICML'23 table, so both share a fingerprint, a cache and its timing.
    probe = BlockSpec(ConvShape(256, 256, (3, 3), (1, 1), (1, 1, 1, 1), 1), (n, 256, 14, 14), None)
    probe_runnable = build(probe)
    table_fp = setting_fingerprint(probe_runnable.fingerprint, n)
    cache = TimingCache(cache_dir, table_fp, force=force) if cache_dir is not None else None
    nodes = {node.name: node for node in analysis.graph_module.graph.nodes}

    def timed(key: str, make: Any, reject_ms: float | None = None) -> tuple[Timing, bool, bool]:
        """(timing, from the cache, coarse)."""
        hit = cache.get(key) if cache is not None else None
        if hit is not None:
            return hit[0], True, hit[1]
        runnable = make()
        setting_fingerprint(runnable.fingerprint).check_compatible(table_fp, force=force)
        timing, rough = time_entry(runnable, protocol, reject_ms)
        if cache is not None:
            cache.put(key, timing, coarse=rough)
        return timing, False, rough

    overhead, _, _ = timed(
        json.dumps({"call_overhead": n}),
        lambda: be.prepare(nn.ReLU(), (torch.zeros(n, 1, 1, 1),)),
    )
    peak = 0.0  # best MACs per ms seen on this setting
    if bound:
        peak = probe.macs() / timed(probe.key(), lambda r=probe_runnable: r)[0].median_ms
    del probe_runnable

    variants = [v for v in chain_variants(analysis) if v.chain == chain]
    blocks: dict[tuple[int, int], BlockSpec] = {}
    specs: list[BlockSpec] = []
    for v in variants:
        if (v.st, v.end) not in blocks:
            blocks[v.st, v.end] = block_spec(the_chain, v.st, v.end, batch=n, graph_nodes=nodes)
        specs.append(variant_spec(v, blocks[v.st, v.end]))
    single = {
        v.end: spec.key() for v, spec in zip(variants, specs, strict=True) if v.end - v.st == 1
    }

    skipped: list[str] = []
    bounded: list[str] = []
    coarse: list[str] = []
    timings: dict[str, Timing] = {}
    from_cache = 0
    bar = tqdm(
        total=len(variants),
        desc=f"variants, chain {chain}",
        unit="variant",
        disable=None if progress is None else not progress,
    )
    try:
        # By kept count: the single-conv blocks (the bound's reference) come first.
        for i in sorted(range(len(variants)), key=lambda i: len(variants[i].kept)):
            v, spec, key = variants[i], specs[i], specs[i].key()
            bar.update(1)
            name = _name(v)
            if spec.conv.weight_numel() > max_weights:
                skipped.append(name)
                continue
            if key in timings:
                continue
            singles = kept_singles(v, single, timings) if bound and len(v.kept) > 1 else None
            lower = spec.macs() / (bound_safety * peak) if singles is not None else 0.0
            if (
                singles is not None
                and lower > singles
                and (cache is None or cache.get(key) is None)
            ):
                bounded.append(name)
                continue
            reject = None if singles is None else bound_safety * singles
            timings[key], hit, rough = timed(key, lambda s=spec: build(s), reject)
            from_cache += hit
            if rough:
                coarse.append(name)
            peak = max(peak, spec.macs() / timings[key].median_ms)
            bar.set_postfix_str(spec.describe()[:48], refresh=False)
    finally:
        bar.close()
    rows: list[tuple[ShapeKey, tuple[int, ...], float, float]] = []
    left_out = set(bounded)
    for v, spec in zip(variants, specs, strict=True):
        t = timings.get(spec.key())
        if t is None or _name(v) in left_out:
            continue
        net = max(t.median_ms - overhead.median_ms, MIN_NET_FRACTION * t.median_ms)
        rows.append((shape_key(v), v.kept, net, statistics.pstdev(t.samples_ms)))
    meta: dict[str, Any] = {
        "fingerprint": dict(table_fp),
        "model": type(model).__name__,
        "chain": chain,
        "num_convs": the_chain.num_convs,
        "input_shapes": [list(x.shape) for x in inputs],
        "call_overhead_ms": overhead.median_ms,
        "protocol": dataclasses.asdict(protocol),
        "skipped": skipped,
        "max_weights": max_weights,
        "bounded": sorted(bounded),
        "coarse": sorted(coarse),
        "bound_safety": bound_safety if bound else None,
        "peak_gmacs_per_s": peak / 1e6 if peak > 0 else None,
        "variants": len(variants),
        "unique_shapes": len(timings),
        "from_cache": from_cache,
        "timed_now": len(timings) - from_cache,
        "build_s": time.perf_counter() - t_start,
    }
    return LayerMergeLatencyTable(rows, source=f"<{type(model).__name__} variants>", meta=meta)


def _name(variant: BlockVariant) -> str:
    """How ``meta["skipped"]``/``["bounded"]``/``["coarse"]`` list a variant: st,end,[kept]."""
    return f"{variant.st},{variant.end},{list(variant.kept)}"


def kept_singles(
    variant: BlockVariant, single: Mapping[int, str], timings: Mapping[str, Timing]
) -> float | None:
    """Summed times (ms) of the variant's kept convs as single-conv blocks, the bound's
    reference; None when one of them is not timed (then nothing is bounded against it)."""
    total = 0.0
    for p in variant.kept:
        t = timings.get(single.get(p, ""))
        if t is None:
            return None
        total += t.median_ms
    return total


__all__ = [
    "MAX_WEIGHTS",
    "kept_singles",
    "measure_layermerge_latency",
    "shape_key",
    "variant_spec",
]
