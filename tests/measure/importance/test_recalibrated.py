"""The BN-re-estimated proxy on a MobileNetV2-style net (depthwise convs, in-place ReLU6,
residuals, channels-last): its shared heads and private BN modules give every entry the score
of its own whole network re-estimated alone, and leave the model untouched."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from importance_helpers import digits, recalibrated_scores_hold, toy_latency
from torch import nn

import depthfx
from depthfx.measure import bn_recalibration
from depthfx.measure.importance import entry_plan, fastest_merges, measure_importance
from depthfx.measure.importance.measure import BN_DEFAULT, BN_IMAGES, default_options
from depthfx.passes.analyze import analyze
from depthfx.passes.prepare import prepare

pytestmark = pytest.mark.usefixtures("one_torch_thread")

X1 = torch.zeros(1, 1, 8, 8)


def conv_bn(cin: int, cout: int, k: int, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, 1, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


class Inverted(nn.Module):
    """1×1 expand, 3×3 depthwise, 1×1 project, identity residual; ReLU6 in place."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *conv_bn(c, 2 * c, 1), nn.ReLU6(inplace=True),
            *conv_bn(2 * c, 2 * c, 3, groups=2 * c), nn.ReLU6(inplace=True),
            *conv_bn(2 * c, c, 1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def trained_inverted() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        *conv_bn(1, 8, 3), nn.ReLU6(inplace=True), Inverted(8), Inverted(8),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )  # fmt: skip
    x, y = digits()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for i in range(60):
        xb, yb = x[i * 20 % 1400 :][:64], y[i * 20 % 1400 :][:64]
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("deployed", [False, True])
def test_every_score_is_its_whole_network_re_estimated(deployed: bool) -> None:
    model = trained_inverted()
    analysis = analyze(model, X1, training=False)
    latency = toy_latency(analysis) if deployed else None
    merges = fastest_merges(analysis, latency) if deployed else None
    x = digits()[0][1400:1464]
    batches = list(x.split(32))  # two batches: the cumulative average spans batches
    before = {k: v.clone() for k, v in model.state_dict().items()}
    table = measure_importance(
        model, X1, [x], analysis=analysis, score="kl", bn_recalibration=True, batch_size=32,
        latency=latency, progress=False,
    )  # fmt: skip
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())

    changed = recalibrated_scores_hold(table, model, X1, analysis, merges, batches, x)
    assert len(changed) >= 10
    # entries that share a head and differ in the activation at its frontier (in place)
    assert any(k[3] == 0 for k in changed) and any(k[3] == 1 for k in changed)


def layerwise_re_estimated(net: nn.Module, batches: list[torch.Tensor]) -> nn.Module:
    """The definition of the one-pass estimate, one BN layer at a time in execution order:
    each layer's statistics are the batch average of its inputs' mean and unbiased variance
    in the eval-mode network whose earlier layers are already re-estimated."""
    net.eval()
    order: list[nn.Module] = []
    hooks = [m.register_forward_pre_hook(lambda m, a: order.append(m))
             for m in net.modules() if isinstance(m, nn.BatchNorm2d)]  # fmt: skip
    net(batches[0])
    for h in hooks:
        h.remove()
    for bn in order:
        seen: list[torch.Tensor] = []
        hook = bn.register_forward_pre_hook(lambda m, a, seen=seen: seen.append(a[0].detach()))
        for x in batches:
            net(x)
        hook.remove()
        bn.running_mean.copy_(torch.stack([s.mean((0, 2, 3)) for s in seen]).mean(0))
        bn.running_var.copy_(torch.stack([s.var((0, 2, 3)) for s in seen]).mean(0))
    return net


def test_one_pass_scores_are_each_whole_network_re_estimated_layer_by_layer(monkeypatch) -> None:
    calls = []
    batch_norm = bn_recalibration.F.batch_norm
    monkeypatch.setattr(bn_recalibration.F, "batch_norm",
                        lambda *a, **k: calls.append(1) or batch_norm(*a, **k))  # fmt: skip
    model = trained_inverted()
    analysis = analyze(model, X1, training=False)
    latency = toy_latency(analysis)
    merges = fastest_merges(analysis, latency)
    x = digits()[0][1400:1464]
    batches = list(x.split(32))
    calls.clear()  # training's BN calls
    table = measure_importance(
        model, X1, [x], analysis=analysis, score="kl", bn_recalibration="one-pass",
        batch_size=32, latency=latency, progress=False,
    )  # fmt: skip
    one_pass_calls = len(calls)
    two_pass = measure_importance(
        model, X1, [x], analysis=analysis, score="kl", bn_recalibration=True, batch_size=32,
        latency=latency, progress=False,
    )  # fmt: skip
    assert table.meta["fingerprint"]["bn_recalibration"] == "one-pass"
    # a BN layer that runs estimates once per chunk (2) and normalises once: hooks do not pile
    # up on shared modules (at most the base and one network per entry, 7 BN layers each)
    assert one_pass_calls <= (len(table.scores) + 1) * 7 * 3

    def recalibrated(key):
        net = prepare(copy.deepcopy(model), entry_plan(analysis, key, merges), (X1,))
        return layerwise_re_estimated(net, batches)

    with torch.no_grad():
        ref = F.log_softmax(recalibrated(None)(x), 1)
        changed = [k for k, v in table.scores.items() if v != 0]
        assert len(changed) >= 10
        differs = 0
        for key in changed:
            kl = float((ref.exp() * (ref - F.log_softmax(recalibrated(key)(x), 1))).sum(1).mean())
            assert table.scores[key] == pytest.approx(-kl, rel=1e-4, abs=1e-9), key
            differs += table.scores[key] != pytest.approx(two_pass.scores[key], rel=1e-4)
        assert differs > 0  # another estimate than the two passes, not the same one renamed


def test_default_options_re_estimate_bn_with_data_unless_chosen() -> None:
    data = torch.zeros(4, 1, 8, 8)
    assert default_options(data, None) == {"bn_recalibration": BN_DEFAULT, "images": BN_IMAGES}
    assert default_options(data, {"images": 64})["images"] == 64
    assert default_options(data, {"images": None})["images"] == BN_IMAGES
    for chosen in ({"estimate": "fisher"}, {"bn_recalibration": False}, {"method": "finetune"}):
        assert default_options(data, chosen) == chosen  # the caller's choice stands
    assert default_options(None, {"images": 8}) == {"images": 8}  # random inputs: Fisher


def test_plan_with_data_scores_with_bn_re_estimated() -> None:
    model = trained_inverted()
    analysis = analyze(model, X1, training=False)
    x = digits()[0][1400:1464]
    options = {"progress": False}
    latency = toy_latency(analysis)
    singles = sum(t for (_, s, e), t in latency.times.items() if e - s == 1)
    latency.meta.update(end_to_end_ms=singles, fixed_ms=0.0)
    plan = depthfx.plan(model, X1, 1.0, latency=latency, data=x, importance_options=options)
    fingerprint = plan.fingerprints["importance"]
    assert fingerprint["bn_recalibration"] == BN_DEFAULT and fingerprint["images"] == BN_IMAGES
    fisher = depthfx.plan(model, X1, 1.0, latency=latency, data=x,
                          importance_options={**options, "bn_recalibration": False})  # fmt: skip
    assert "bn_recalibration" not in fisher.fingerprints["importance"]


@pytest.mark.parametrize(("method", "re_estimated"), [("icml23", True), ("combined", False)])
def test_combined_scores_its_icml23_rows_like_the_variants(
    method: str, re_estimated: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The variants are scored by the Fisher proxy, so combined's ICML'23 rows are too: one
    scale in one DP (the BN-re-estimated default is icml23's)."""
    seen: dict = {}

    class Measured(Exception):
        pass

    def measure(*args: object, **options: object) -> None:
        seen.update(options)
        raise Measured

    monkeypatch.setattr(depthfx.ImportanceTable, "measure", measure)
    model = trained_inverted()
    latency = toy_latency(analyze(model, X1, training=False))
    with pytest.raises(Measured):
        depthfx.plan(model, X1, 0.9, latency=latency, data=digits()[0][:64], method=method)
    assert ("bn_recalibration" in seen) == re_estimated
