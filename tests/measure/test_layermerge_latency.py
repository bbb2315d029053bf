"""Variant latency table of a real CNN: one row per variant, positive times, cache resume."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from latency_helpers import FAST
from torch import nn

from depthfx.measure.layermerge_latency import measure_layermerge_latency
from depthfx.measure.layermerge_variants import chain_variants
from depthfx.passes.analyze import analyze


def plain_net() -> nn.Module:
    """Four 3×3 8→8 convs (three prunable) with BN + ReLU: blocks have several variants."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()]
    for _ in range(3):
        layers += [nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()]
    return nn.Sequential(*layers).eval()


def test_one_row_per_variant_and_cache_resume(tmp_path: Path) -> None:
    net, x = plain_net(), torch.randn(1, 3, 12, 12)
    analysis = analyze(net, (x,))
    variants = [v for v in chain_variants(analysis) if v.chain == 0]
    table = measure_layermerge_latency(net, x, analysis=analysis, protocol=FAST, cache_dir=tmp_path)
    assert [(k[:2], kept) for k, kept, _, _ in table.rows] == [
        ((v.st, v.end), v.kept) for v in variants
    ]
    assert len(variants) > len(analysis.chains[0].valid_blocks())  # pruning adds rows
    assert all(t > 0 and s >= 0 for _, _, t, s in table.rows)
    assert table.meta["fingerprint"]["backend"] == "onnxruntime"
    assert table.meta["timed_now"] == table.meta["unique_shapes"] > 0
    again = measure_layermerge_latency(net, x, analysis=analysis, protocol=FAST, cache_dir=tmp_path)
    assert again.meta["timed_now"] == 0 and again.rows == table.rows


def deep_net() -> nn.Module:
    """Twelve 3×3 16→16 convs: merging many of them gives kernels up to 25×25, whose MACs grow
    quadratically while their singles' grow linearly (6× at the longest), so the long variants
    are dominated whatever the machine's load (at 32×32 MACs, not per-call costs, dominate)."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()]
    for _ in range(11):
        layers += [nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()]
    return nn.Sequential(*layers).eval()


def test_bounding_drops_only_variants_slower_than_their_kept_singles() -> None:
    net, x = deep_net(), torch.randn(1, 3, 32, 32)
    analysis = analyze(net, (x,))
    full = measure_layermerge_latency(net, x, analysis=analysis, protocol=FAST, bound=False)
    table = measure_layermerge_latency(net, x, analysis=analysis, protocol=FAST)
    assert full.meta["bounded"] == [] and len(full.rows) == full.meta["variants"]
    parsed = [json.loads(f"[{name}]") for name in table.meta["bounded"]]
    bounded = {(st, end, tuple(kept)) for st, end, kept in parsed}
    assert bounded, "the test net must have dominated variants"
    # Raw times (net + the per-call overhead) of the unbounded table.
    raw = {
        (k[0], k[1], tuple(kept)): t + full.meta["call_overhead_ms"] for k, kept, t, _ in full.rows
    }
    kept_rows = {(k[0], k[1], tuple(kept)) for k, kept, _, _ in table.rows}
    for st, end, kept in bounded:
        assert (st, end, kept) not in kept_rows  # left out, not costed
        assert len(kept) > 1
        singles = sum(raw[p - 1, p, (p,)] for p in kept)
        assert raw[st, end, kept] > singles, (st, end, kept)
    assert kept_rows | bounded == set(raw)
