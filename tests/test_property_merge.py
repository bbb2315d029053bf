"""Property test: convert(prepare(model, plan)) equals prepare(model, plan) on real CNNs.

For each model (random weights, random BN statistics so that folding is exercised) and each plan
— random valid plans from ``depthfx.testing.random_plan``, without and with pruned convs
(LayerMerge), the original activation pattern, and the extreme A = ∅ with only forced
boundaries (everything mergeable merged) — the merged
network must reproduce the prepared one in eval mode to max relative error ≤ 1e-5 (fp32), and it
must have strictly fewer convs whenever some merge group holds more than one conv.

The extreme under the general stride rule grows kernels past hundreds of taps on networks with
total stride 32 (MobileNetV2: one 491×491 kernel, 7 GiB in float64); ``convert`` refuses those
with PlanError. For such models the extreme is taken under the paper's stride rule (a boundary
after every strided conv), the largest merge that stays deployable.
"""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from depthfx.models import load_model
from depthfx.passes.analyze import analyze
from depthfx.passes.convert import convert, count_convs
from depthfx.passes.prepare import prepare
from depthfx.passes.verify import group_mismatch
from depthfx.testing import merge_everything_plan, original_plan, random_plan, randomize_bn

INPUT = (2, 3, 32, 32)
RTOL = 1e-5

# model, stride rule for the extreme (see the module docstring); 5 random plans each.
MODELS = [
    ("torchvision:resnet18", "paper"),
    ("torchvision:mobilenet_v2", "paper"),
    ("timm:tf_efficientnet_lite0", "paper"),
    ("torchvision:resnet50", "paper"),
    ("torchvision:vgg11_bn", "general"),
    ("torchvision:mobilenet_v3_small", "general"),
    ("torchvision:regnet_x_400mf", "paper"),
    ("torchvision:efficientnet_b0", "general"),
    ("timm:mobilenetv2_100", "paper"),
    ("timm:resnet18d", "general"),
]
PLANS = 5
PRUNED_PLANS = 2
PRUNE_PROB = 0.6
# ResNet-50's extreme merges each stage into one kernel of 2.8 GB (float64): allow it here.
KERNEL_LIMIT = {"torchvision:resnet50": 4 << 30}
# The default run: identity + projection residuals, inverted residuals with ReLU6, timm
# BN+act and TF "same" padding, each plan kind at least once.
FAST = {
    ("torchvision:resnet18", "random0"),
    ("torchvision:resnet18", "extreme-paper"),
    ("torchvision:mobilenet_v2", "random1"),
    ("torchvision:mobilenet_v2", "original"),
    ("timm:tf_efficientnet_lite0", "random0"),
    ("timm:tf_efficientnet_lite0", "extreme-paper"),
    # Pruned plans on six CNNs: empty residual bodies (x + x), BN+act, projections, groups.
    ("torchvision:resnet18", "pruned0"),
    ("torchvision:mobilenet_v2", "pruned0"),
    ("timm:tf_efficientnet_lite0", "pruned1"),
    ("torchvision:regnet_x_400mf", "pruned0"),
    ("torchvision:vgg11_bn", "pruned0"),
    ("timm:resnet18d", "pruned0"),
}


def _cases() -> list:
    cases = []
    for name, extreme in MODELS:
        kinds = [
            *(f"random{k}" for k in range(PLANS)),
            *(f"pruned{k}" for k in range(PRUNED_PLANS)),
            "original",
            f"extreme-{extreme}",
        ]
        for kind in kinds:
            marks = () if (name, kind) in FAST else (pytest.mark.slow,)
            cases.append(pytest.param(name, kind, marks=marks, id=f"{name}-{kind}"))
    return cases


_MODELS: dict[str, tuple[nn.Module, torch.Tensor]] = {}


def _model(name: str) -> tuple[nn.Module, torch.Tensor]:
    if name not in _MODELS:
        torch.manual_seed(0)
        model = randomize_bn(load_model(name).eval())
        _MODELS.clear()  # one model in memory at a time
        _MODELS[name] = (model, torch.randn(INPUT, generator=torch.Generator().manual_seed(1)))
    return _MODELS[name]


@pytest.mark.parametrize(("name", "kind"), _cases())
def test_merged_equals_prepared(name: str, kind: str) -> None:
    model, x = _model(name)
    strided = kind.removeprefix("extreme-") if kind.startswith("extreme") else "general"
    analysis = analyze(model, x, strided=strided)
    if kind.startswith("random"):
        plan = random_plan(analysis, seed=int(kind.removeprefix("random")))
    elif kind.startswith("pruned"):
        seed = int(kind.removeprefix("pruned"))
        plan = random_plan(analysis, seed=seed, prune_prob=PRUNE_PROB)
    elif kind == "original":
        plan = original_plan(analysis)
    else:
        plan = merge_everything_plan(analysis)
    start = time.perf_counter()
    prepared = prepare(model, plan, (x,))
    limit = KERNEL_LIMIT.get(name, 2 << 30)
    merged = convert(prepared, plan, (x,), rtol=RTOL, atol=0.0, max_kernel_bytes=limit)
    elapsed = time.perf_counter() - start

    prepared.eval()
    with torch.no_grad():
        want, got = prepared(x), merged(x)
    rel = ((want - got).abs().max() / want.abs().max()).item()
    assert rel <= RTOL
    # Each merged conv on its own too: a saturating activation after it could hide an error.
    assert group_mismatch(prepared, merged, (x,), rtol=RTOL, atol=0.0) is None

    multi = sum(kept > 1 for c in plan.chains for kept in _kept_per_group(c))
    before, after = count_convs(prepared), count_convs(merged)
    if multi:
        assert after < before
    elif kind.startswith("pruned"):  # a kept conv may still absorb a projection shortcut
        assert after <= before
    else:
        assert after == before
    print(f"{name} {kind}: rel {rel:.2e} convs {before}->{after} {elapsed:.1f}s")


def _kept_per_group(chain_plan) -> list[int]:
    """The number of convs each group keeps (pruned convs are gone before convert)."""
    pruned = set(chain_plan.pruned)
    return [sum(p not in pruned for p in range(i + 1, j + 1)) for i, j in chain_plan.groups()]
