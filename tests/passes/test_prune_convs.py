"""prune_convs: which convs are prunable, the rewrite, exact merges of pruned plans, plan JSON."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from depthfx.models import load_model
from depthfx.passes.analyze import analyze
from depthfx.passes.convert import convert, count_convs
from depthfx.passes.prepare import prepare
from depthfx.passes.verify import compare_outputs
from depthfx.plans import ChainPlan, Plan, PlanError, chain_plan
from depthfx.testing import randomize_bn


def _prunable(model: nn.Module, size: int = 32) -> set[str]:
    analysis = analyze(model.eval(), torch.randn(1, 3, size, size))
    return {chain.conv(p).module for chain in analysis.chains for p in chain.prunable}


def test_prunable_resnet18_are_the_shape_preserving_3x3() -> None:
    expected = {f"layer1.{b}.conv{c}" for b in (0, 1) for c in (1, 2)}
    for stage in (2, 3, 4):
        expected |= {f"layer{stage}.0.conv2", f"layer{stage}.1.conv1", f"layer{stage}.1.conv2"}
    assert _prunable(load_model("torchvision:resnet18")) == expected


def test_prunable_resnet50_includes_the_64_to_64_1x1() -> None:
    # The original can never prune layer1.0.conv1 (its variant collides, spec §7.4); here it is.
    blocks = {1: 3, 2: 4, 3: 6, 4: 3}
    expected = {"layer1.0.conv1"}
    for stage, n in blocks.items():
        expected |= {f"layer{stage}.{b}.conv2" for b in range(1 if stage > 1 else 0, n)}
    assert _prunable(load_model("torchvision:resnet50")) == expected


def test_prunable_mobilenet_v2_are_the_stride_1_depthwise() -> None:
    found = _prunable(load_model("torchvision:mobilenet_v2"))
    assert len(found) == 13
    model = load_model("torchvision:mobilenet_v2")
    for name in found:
        conv = model.get_submodule(name)
        assert conv.groups == conv.in_channels == conv.out_channels and conv.stride == (1, 1)


class UserCNN(nn.Module):
    """Depth multiplier (groups = in, out = 2·in), grouped, dilated, valid-padded convs and a
    residual whose body can be pruned empty, with a dropout (transparent) on the body side."""

    def __init__(self) -> None:
        super().__init__()

        def cbr(i: int, o: int, k: int, **kw: int) -> list[nn.Module]:
            return [nn.Conv2d(i, o, k, bias=False, **kw), nn.BatchNorm2d(o), nn.ReLU()]

        self.stem = nn.Sequential(*cbr(3, 8, 3, padding=1))
        self.body = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.Dropout(0.2),
        )
        self.tail = nn.Sequential(
            *cbr(8, 16, 3, padding=1, groups=8),  # depth multiplier 2: not prunable
            *cbr(16, 16, 3, padding=1, groups=4),  # grouped, shape-preserving: prunable
            *cbr(16, 16, 3, padding=2, dilation=2),  # dilated "same": prunable
            *cbr(16, 16, 3),  # valid padding shrinks the map: not prunable
            *cbr(16, 16, 1),  # 1×1: prunable
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.body(x))
        return self.tail(x)


def _user() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return randomize_bn(UserCNN()).eval(), torch.randn(2, 3, 16, 16)


def test_prunable_user_cnn_depth_multiplier_grouped_dilated_valid() -> None:
    model, x = _user()
    (chain,) = analyze(model, x).chains
    names = {chain.conv(p).module for p in chain.prunable}
    assert names == {"body.0", "body.3", "tail.3", "tail.6", "tail.12"}
    assert "yes" in str(chain) and chain.to_json()["prunable"] == list(chain.prunable)


def _plan(model: nn.Module, x: torch.Tensor, act: set[int], merge: set[int], pruned: set[int]):
    analysis = analyze(model, x)
    (chain,) = analysis.chains
    return Plan.for_analysis(
        analysis, [chain_plan([c.node for c in chain.convs], act, merge, pruned)]
    )


@pytest.mark.parametrize(
    ("act", "merge", "pruned"),
    [
        # Residual 1->3 pruned empty inside group (0,4): x + x between conv 1 and conv 4.
        ({4, 5, 6, 7, 8}, {4, 5, 6, 7, 8}, {2, 3}),
        # The empty body starts the group (1,5) of two kept convs: padded input on both sides.
        ({1, 5, 6, 7, 8}, {1, 5, 6, 7, 8}, {2, 3}),
        # Long groups, a pruned group end, the grouped and the dilated conv pruned.
        ({3, 8}, {3, 8}, {2, 5, 6, 8}),
        # Everything prunable pruned where groups keep a conv; group (1,4) keeps only conv 4.
        ({1, 4, 8}, {1, 4, 8}, {2, 3, 5, 6}),
    ],
)
def test_pruned_plans_merge_exactly(act: set[int], merge: set[int], pruned: set[int]) -> None:
    model, x = _user()
    plan = _plan(model, x, act, merge, pruned)
    prepared = prepare(model, plan, (x,))
    for p in pruned:  # the pruned convs and their BN are gone from the prepared network
        name = analyze(model, x).chains[0].conv(p).module
        with pytest.raises(AttributeError):
            prepared.get_submodule(name)
    merged = convert(prepared, plan, (x,), rtol=1e-5, atol=0.0)
    errors = compare_outputs(prepared, merged, (x,), check=False)
    assert errors.max_rel <= 1e-5
    assert count_convs(merged) == len(plan.chains[0].groups())


def test_empty_residual_body_is_x_plus_x() -> None:
    model, x = _user()
    plan = _plan(model, x, {1, 4, 5, 6, 7, 8}, {1, 4, 5, 6, 7, 8}, {2, 3})
    prepared = prepare(model, plan, (x,)).eval()
    stem = model.stem(x)
    with torch.no_grad():
        want = model.tail(torch.relu(stem + stem))
        assert torch.allclose(prepared(x), want, atol=1e-6)


def test_plan_refuses_bad_pruning() -> None:
    model, x = _user()
    with pytest.raises(PlanError, match="change the shape"):
        prepare(model, _plan(model, x, {8}, {8}, {4}), (x,))  # depth multiplier
    with pytest.raises(PlanError, match="prunes all its convs"):
        prepare(model, _plan(model, x, {1, 2, 3, 8}, {1, 2, 3, 8}, {2}), (x,))
    projection, px = ProjectionBlock().eval(), torch.randn(1, 4, 8, 8)
    (chain,) = analyze(projection, px).chains
    assert [r.kind for r in chain.residuals] == ["projection"]
    with pytest.raises(PlanError, match="empty body"):
        prepare(projection, _plan(projection, px, {3}, {3}, {2}), (px,))


class ProjectionBlock(nn.Module):
    """conv, then a one-conv body with a same-shape 1×1 projection shortcut, then conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = (nn.Conv2d(4, 4, 3, padding=1) for _ in range(3))
        self.short = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.a(x))
        return self.c(torch.relu(self.b(x) + self.short(x)))


def test_chain_plan_json_round_trip_and_old_plans() -> None:
    cplan = ChainPlan(("a", "b", "c"), (3,), (3,), (2,))
    plan = Plan((cplan,), input_shapes=((1, 3, 8, 8),))
    again = Plan.from_json(plan.to_json())
    assert again == plan and again.chains[0].pruned == (2,)
    old = plan.to_json()
    del old["chains"][0]["pruned"]
    assert Plan.from_json(old).chains[0].pruned == ()
    with pytest.raises(PlanError, match="positions must lie"):
        ChainPlan(("a",), (1,), (1,), (2,)).validate()


def test_pruned_merged_model_exports_to_onnx(tmp_path) -> None:
    from depthfx.export import export_onnx

    model, x = _user()
    plan = _plan(model, x, {1, 5, 6, 7, 8}, {1, 5, 6, 7, 8}, {2, 3})
    merged = convert(prepare(model, plan, (x,)), plan, (x,))
    assert export_onnx(merged, tmp_path / "pruned.onnx", (x,)).exists()  # checked against ORT
