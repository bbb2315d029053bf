"""The LayerMerge variant proxy on timm's EfficientNet-Lite0 (random weights, 32×32): the
variants whose block starts with a pruned conv crashed it (a region 15 wide where the base
network's is 16, ``move_padding`` left their group pad unused)."""

from __future__ import annotations

import pytest
import torch

from depthfx.measure.layermerge_importance import measure_layermerge_importance, variant_plan
from depthfx.measure.layermerge_variants import chain_variants
from depthfx.passes.analyze import analyze
from depthfx.passes.convert import convert
from depthfx.passes.prepare import prepare
from depthfx.passes.verify import compare_outputs


@pytest.mark.slow
def test_lite0_variants_with_a_pruned_first_conv() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    x = torch.randn(1, 3, 32, 32)
    analysis = analyze(model, (x,), training=False)
    starts = [v for v in chain_variants(analysis) if v.chain == 0 and v.st + 1 in v.pruned]
    # Blocks through the first stride-2 TF-"same" convs (Conv2dSame) and residuals.
    chosen = [v for v in starts if v.end <= 16]
    assert len(chosen) >= 20
    data = [(torch.randn(2, 3, 32, 32), None)]
    table = measure_layermerge_importance(
        model, x, data, analysis=analysis, images=2, score="mse",
        only={(v.st, v.end, v.kept) for v in chosen},
    )  # fmt: skip
    assert len(table.rows) == len(chosen)
    assert all(s <= 0.0 and s == s for _, _, s in table.rows)
    longest = max(chosen, key=lambda v: (v.end - v.st, len(v.kept)))
    plan = variant_plan(analysis, longest)
    prepared = prepare(model, plan, (x,)).eval()
    merged = convert(prepared, plan, (x,), rtol=1e-4, atol=0.0)
    assert compare_outputs(prepared, merged, (x,), check=False).max_rel <= 1e-4
