"""Capture: leaf policy, mode handling, shapes, and clear errors for untraceable models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import depthfx
from depthfx.passes.capture import capture


class ValueBranch(nn.Module):
    """Branches on a tensor value: not symbolically traceable."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return x


class WithBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.body = nn.Sequential(nn.ReLU(), ValueBranch())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.conv(x))


class TrainFlag(nn.Module):
    """Traced through, so its ``self.training`` branch is specialised at trace time."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(4))
        self.register_buffer("var", torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.batch_norm(x, self.mean, self.var, training=self.training)
        return x * 2 if self.training else x


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.flag = TrainFlag()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.flag(self.bn(self.conv(x)))


def test_untraceable_module_names_module_reason_and_fix() -> None:
    with pytest.raises(depthfx.CaptureError) as info:
        capture(WithBranch().eval(), torch.randn(1, 3, 8, 8))
    msg = str(info.value)
    assert "body.1 (ValueBranch)" in msg
    assert "control flow" in msg
    assert "register_leaf" in msg and "ValueBranch" in msg


def test_register_leaf_makes_it_traceable() -> None:
    model = WithBranch().eval()
    depthfx.register_leaf(ValueBranch)
    try:
        gm = capture(model, torch.randn(1, 3, 8, 8))
    finally:
        depthfx.patterns.LEAF_MODULES.discard(ValueBranch)
    assert "body.1" in {n.target for n in gm.graph.nodes if n.op == "call_module"}


def test_shapes_hierarchy_and_eval_default() -> None:
    model = Net().eval()
    x = torch.randn(2, 3, 8, 8)
    gm = capture(model, x)
    assert gm.state_dict().keys() == model.state_dict().keys()
    for node in gm.graph.nodes:
        if node.op in ("call_module", "call_function", "placeholder"):
            assert tuple(node.meta["tensor_meta"].shape) == (
                2,
                *((3,) if node.op == "placeholder" else (4,)),
                8,
                8,
            )
    assert gm.meta["depthfx_training"] is False
    torch.testing.assert_close(gm(x), model(x))


def test_trains_in_requested_mode_without_side_effects() -> None:
    model = Net().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gm = capture(model, torch.randn(2, 3, 8, 8), training=True)
    assert gm.meta["depthfx_training"] is True
    assert not any(m.training for m in model.modules()), "modes must be restored"
    mul = [n for n in gm.graph.nodes if n.op == "call_function" and n.target.__name__ == "mul"]
    assert mul, "the train-mode branch of TrainFlag must be traced"
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])  # shape propagation updated no stats


def test_bad_input_shape_is_a_capture_error() -> None:
    with pytest.raises(depthfx.CaptureError, match="shape propagation failed at conv"):
        capture(Net().eval(), torch.randn(1, 5, 8, 8))


def test_timm_no_trace_layers_stay_leaves() -> None:
    timm_layers = pytest.importorskip("timm.layers")
    model = nn.Sequential(
        timm_layers.Conv2dSame(3, 4, 3, stride=2), timm_layers.BatchNormAct2d(4)
    ).eval()
    gm = capture(model, torch.randn(1, 3, 9, 9))
    assert [n.op for n in gm.graph.nodes] == ["placeholder", "call_module", "call_module", "output"]


def test_default_mode_keeps_per_module_flags() -> None:
    model = Net().train()
    model.bn.eval()  # a frozen BN inside a training model
    gm = capture(model, torch.randn(2, 3, 8, 8))
    assert gm.meta["depthfx_training"] is True and gm.training
    assert model.training and not model.bn.training and model.flag.training
