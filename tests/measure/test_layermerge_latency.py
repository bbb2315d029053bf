"""Variant latency table of a real CNN: one row per variant, positive times, cache resume."""

from __future__ import annotations

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
