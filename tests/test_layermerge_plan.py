"""plan(method=...) end to end on a small CNN: layermerge/combined plans prune convs, and
prepare → convert computes exactly what the prepared network computes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import depthfx
from depthfx.measure.setting import TimingProtocol

FAST = TimingProtocol(warmup_s=0.0, blocks=3, block_s=0.002, retries=0)


def cnn() -> nn.Module:
    """A stem and four 3×3 16→16 convs with BN + ReLU (all four prunable), then a classifier."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()]
    for _ in range(4):
        layers += [nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)]
    model = nn.Sequential(*layers).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("method", ["layermerge", "combined"])
def test_plan_prepare_convert_exact(method: str, tmp_path) -> None:
    model, x = cnn(), torch.randn(1, 3, 64, 64)
    data = torch.randn(16, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    plan = depthfx.plan(
        model, x, 0.8, data=data, method=method,
        latency_options={"protocol": FAST, "calibrate": False, "cache_dir": tmp_path},
        importance_options={"estimate": "exact", "progress": False},
    )  # fmt: skip
    assert plan.predicted_ms is not None and plan.objective is not None
    assert "layermerge_latency" in plan.fingerprints
    prepared = depthfx.prepare(model, plan).eval()
    merged = depthfx.convert(prepared)
    probe = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(merged(probe), prepared(probe), rtol=1e-4, atol=1e-5)
    pruned = {p for c in plan.chains for p in c.pruned}
    groups = sum(len(c.groups()) for c in plan.chains)
    assert pruned or groups < 5  # a 0.6 budget needs merging or pruning


def test_unknown_method() -> None:
    with pytest.raises(depthfx.DepthFXError, match="unknown method"):
        depthfx.plan(cnn(), torch.randn(1, 3, 16, 16), method="nope")
