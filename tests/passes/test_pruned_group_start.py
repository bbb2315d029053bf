"""A merge group whose first conv is pruned, with nodes between the group input and its first
kept conv: EfficientNet-Lite0's structure (timm's ``aa``/``se`` ``nn.Identity`` after a BN+act
module, TF-"same" stride-2 convs). ``move_padding`` must pad the group input where the first
kept conv reads it; padding the pruned conv's input left the pad unused, so the kept convs ran
unpadded (a 15-wide map where the original's is 16, the variant proxy's crash on Lite0)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from depthfx.measure.layermerge_importance import measure_layermerge_importance
from depthfx.passes.analyze import analyze
from depthfx.passes.convert import convert
from depthfx.passes.prepare import prepare
from depthfx.passes.verify import compare_outputs
from depthfx.plans import Plan, chain_plan
from depthfx.testing import randomize_bn


class LiteStart(nn.Module):
    """Stride-2 stem; a prunable depthwise 3×3 whose activation is followed by a transparent
    ``nn.Identity`` (timm's ``se``); a 1×1; a TF-"same" stride-2 depthwise 3×3 (explicit
    asymmetric pad); a 1×1 head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.se = nn.Identity()
        self.pw = nn.Conv2d(8, 16, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.down = nn.Conv2d(16, 16, 3, stride=2, groups=16, bias=False)
        self.bn3 = nn.BatchNorm2d(16)
        self.head = nn.Conv2d(16, 8, 1)

    def stem_value(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self.bn0(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.se(F.relu6(self.bn1(self.dw(self.stem_value(x)))))
        x = self.bn2(self.pw(x))
        x = F.relu6(self.bn3(self.down(F.pad(x, (0, 1, 0, 1)))))
        return self.head(x)

    def dw_pruned(self, x: torch.Tensor) -> torch.Tensor:
        """The network of the plan below: dw and its BN gone, group (1, 4) linear inside, its
        padding moved to its input (spec §5.1: down's (0, 1) pad before pw)."""
        x = self.bn2(self.pw(F.pad(self.se(self.stem_value(x)), (0, 1, 0, 1))))
        x = F.relu6(self.bn3(self.down(x)))
        return self.head(x)


def _plan(model: nn.Module, x: torch.Tensor, act: set[int], pruned: set[int]) -> Plan:
    analysis = analyze(model, x)
    (chain,) = analysis.chains
    return Plan.for_analysis(
        analysis, [chain_plan([c.node for c in chain.convs], act, act, pruned)]
    )


def _model() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return randomize_bn(LiteStart()).eval(), torch.randn(2, 3, 32, 32)


def test_group_starting_with_a_pruned_conv_pads_its_first_kept_conv() -> None:
    model, x = _model()
    (chain,) = analyze(model, x).chains
    assert chain.conv(2).module == "dw" and 2 in chain.prunable
    plan = _plan(model, x, {1, 4}, {2})  # group (1, 4) keeps pw and down
    prepared = prepare(model, plan, (x,)).eval()
    with torch.no_grad():
        want = model.dw_pruned(x)
        got = prepared(x)
    assert got.shape == want.shape == (2, 8, 8, 8)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    merged = convert(prepared, plan, (x,), rtol=1e-5, atol=0.0)
    assert compare_outputs(prepared, merged, (x,), check=False).max_rel <= 1e-5


def test_variant_proxy_runs_on_pruned_group_starts() -> None:
    model, x = _model()
    data = [(torch.randn(4, 3, 32, 32), None)]
    table = measure_layermerge_importance(model, x[:1], data, score="mse")
    scores = {(k[0], k[1], kept): s for k, kept, s in table.rows}
    assert (1, 4, (3, 4)) in scores  # the block of the test above, dw pruned
    assert all(s <= 0.0 and s == s for s in scores.values())
    assert scores[1, 4, (3, 4)] < 0.0  # removing dw changes the output


@pytest.fixture
def timm_layers():
    return pytest.importorskip("timm.layers")


class TimmLiteStart(nn.Module):
    """The same with timm's layers: BN+act modules (split by ``prepare`` into BN and a kept
    activation node after the pruned conv's input was recorded) and ``Conv2dSame``."""

    def __init__(self, layers) -> None:
        super().__init__()
        self.stem = layers.create_conv2d(3, 8, 3, stride=2, padding="same")
        self.bn0 = layers.BatchNormAct2d(8, act_layer=nn.ReLU6)
        self.dw = layers.create_conv2d(8, 8, 3, padding="same", depthwise=True)
        self.bn1 = layers.BatchNormAct2d(8, act_layer=nn.ReLU6)
        self.aa, self.se = nn.Identity(), nn.Identity()
        self.pw = layers.create_conv2d(8, 16, 1)
        self.bn2 = layers.BatchNormAct2d(16, apply_act=False)
        self.down = layers.create_conv2d(16, 16, 3, stride=2, padding="same", depthwise=True)
        self.bn3 = layers.BatchNormAct2d(16, act_layer=nn.ReLU6)
        self.head = nn.Conv2d(16, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.se(self.aa(self.bn1(self.dw(self.bn0(self.stem(x))))))
        return self.head(self.bn3(self.down(self.bn2(self.pw(x)))))


def test_timm_bn_act_group_start_pruned(timm_layers) -> None:
    torch.manual_seed(0)
    model, x = randomize_bn(TimmLiteStart(timm_layers)).eval(), torch.randn(2, 3, 32, 32)
    plan = _plan(model, x, {1, 4}, {2})
    prepared = prepare(model, plan, (x,)).eval()
    with torch.no_grad():
        # dw pruned with bn1 (and its ReLU6); down's "same" pad (0, 1) moved before pw.
        h = model.bn2(model.pw(F.pad(model.bn0(model.stem(x)), (0, 1, 0, 1))))
        h = F.conv2d(h, model.down.weight, model.down.bias, stride=2, groups=16)
        want = model.head(model.bn3(h))
        got = prepared(x)
    assert got.shape == want.shape == (2, 8, 8, 8)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    merged = convert(prepared, plan, (x,), rtol=1e-5, atol=0.0)
    assert compare_outputs(prepared, merged, (x,), check=False).max_rel <= 1e-5
