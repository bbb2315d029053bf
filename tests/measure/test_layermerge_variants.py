"""LayerMerge variants of real blocks: keyed by kept subset, chosen on BN-folded weights."""

from __future__ import annotations

import torch
from torch import nn

from depthfx.measure.layermerge_variants import block_variants, chain_variants, folded_l1
from depthfx.models import load_model
from depthfx.passes.analyze import analyze


def test_resnet50_first_bottleneck_has_no_collision() -> None:
    # The original keys rows by (kernel, dw): "(3,)" and "(1, 3)" collide and conv 1
    # (layer1.0.conv1, 64→64 1×1) is never pruned (spec §7.4). Keyed by subset, both exist.
    model = load_model("torchvision:resnet50").eval()
    analysis = analyze(model, torch.randn(1, 3, 64, 64), strided="paper")
    found = {
        v.kept: v.shape.kernel
        for v in chain_variants(analysis)
        if v.chain == 1 and v.st == 0 and v.end == 3
    }
    assert found == {(3,): (1, 1), (2, 3): (3, 3), (1, 3): (1, 1), (1, 2, 3): (3, 3)}


def test_kept_subset_follows_bn_folded_norm() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        *(m for _ in range(3) for m in (nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)))
    ).eval()
    with torch.no_grad():
        model[0].weight.mul_(10)  # the largest raw norm …
        model[1].weight.fill_(1e-3)  # … but its BN scales it to almost nothing
    analysis = analyze(model, torch.randn(1, 4, 8, 8))
    (chain,) = analysis.chains
    norms = {p: folded_l1(analysis.graph_module, chain.conv(p)) for p in (1, 2, 3)}
    variants = block_variants(chain, 0, 3, norms)
    assert [len(v.kept) for v in variants] == [1, 2, 3]  # one per count, no empty block
    assert 1 not in variants[0].kept and 1 not in variants[1].kept
    assert [v.shape.kernel for v in variants] == [(3, 3), (5, 5), (7, 7)]
