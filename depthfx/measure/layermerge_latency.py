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
timed once, cached). Variants whose merged kernel exceeds ``max_weights`` are not built (such
kernels can be gigabytes and are never fast): they are left out and listed in
``meta["skipped"]``; the DP then cannot choose them, which only removes slow options.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from depthfx.backends.base import Backend, Runnable, get_backend
from depthfx.backends.timing import Timing, measure
from depthfx.errors import DepthFXError
from depthfx.measure.block_shapes import BlockSpec, ConvShape, block_spec
from depthfx.measure.cache import TimingCache
from depthfx.measure.layermerge_variants import BlockVariant, chain_variants
from depthfx.measure.setting import TimingProtocol, setting_fingerprint
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
    backend_options: Mapping[str, Any] | None = None,
    force: bool = False,
) -> LayerMergeLatencyTable:
    """Time every LayerMerge variant of chain ``chain`` of ``model``; see the module doc."""
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

    # The same probe as the ICML'23 table, so both share a fingerprint and a cache.
    probe = BlockSpec(ConvShape(256, 256, (3, 3), (1, 1), (1, 1, 1, 1), 1), (n, 256, 14, 14), None)
    table_fp = setting_fingerprint(build(probe).fingerprint, n)
    cache = TimingCache(cache_dir, table_fp, force=force) if cache_dir is not None else None
    nodes = {node.name: node for node in analysis.graph_module.graph.nodes}

    def timed(key: str, make: Any) -> tuple[Timing, bool]:
        hit = cache.get(key) if cache is not None else None
        if hit is not None:
            return hit[0], True
        runnable = make()
        setting_fingerprint(runnable.fingerprint).check_compatible(table_fp, force=force)
        timing = measure(
            runnable, warmup_s=protocol.warmup_s, blocks=protocol.blocks, block_s=protocol.block_s
        )
        if cache is not None:
            cache.put(key, timing)
        return timing, False

    overhead, _ = timed(
        json.dumps({"call_overhead": n}),
        lambda: be.prepare(nn.ReLU(), (torch.zeros(n, 1, 1, 1),)),
    )
    rows: list[tuple[ShapeKey, tuple[int, ...], float, float]] = []
    skipped: list[str] = []
    timings: dict[str, Timing] = {}
    from_cache = 0
    blocks: dict[tuple[int, int], BlockSpec] = {}
    for v in (v for v in chain_variants(analysis) if v.chain == chain):
        if (v.st, v.end) not in blocks:
            blocks[v.st, v.end] = block_spec(the_chain, v.st, v.end, batch=n, graph_nodes=nodes)
        spec = variant_spec(v, blocks[v.st, v.end])
        if spec.conv.weight_numel() > max_weights:
            skipped.append(f"{v.st},{v.end},{list(v.kept)}")
            continue
        key = spec.key()
        if key not in timings:
            timings[key], hit = timed(key, lambda s=spec: build(s))
            from_cache += hit
        t = timings[key]
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
        "unique_shapes": len(timings),
        "from_cache": from_cache,
        "timed_now": len(timings) - from_cache,
    }
    return LayerMergeLatencyTable(rows, source=f"<{type(model).__name__} variants>", meta=meta)


__all__ = ["MAX_WEIGHTS", "measure_layermerge_latency", "shape_key", "variant_spec"]
