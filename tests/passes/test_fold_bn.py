"""fold_bn_modules: conv→BN pairs fold in place, exactly; pairs that do not qualify stay."""

from __future__ import annotations

import copy

import torch
from torch import fx, nn

from depthfx.passes.fold_bn import fold_bn_modules


def _randomise_bn(model: nn.Module) -> None:
    """Non-trivial running statistics and affine parameters, so a wrong fold shows."""
    generator = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=generator))
            m.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.randn(c, generator=generator))
                m.bias.data.copy_(torch.randn(c, generator=generator))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=2, dilation=2, groups=4)
        self.bn2 = nn.BatchNorm2d(8, affine=False, eps=1e-3)
        self.conv3 = nn.Conv2d(8, 8, 1)  # output also read by the residual: must stay
        self.bn3 = nn.BatchNorm2d(8)
        self.shared = nn.Conv2d(8, 8, 1)  # called twice: must stay
        self.bn4 = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        y = self.conv3(x)
        x = self.bn3(y) + y
        return self.bn4(self.shared(self.shared(x)))


def test_folds_exactly_the_qualifying_pairs() -> None:
    model = Net().eval()
    _randomise_bn(model)
    gm = fx.symbolic_trace(model)
    folded_gm = copy.deepcopy(gm)
    names_before = [n.name for n in folded_gm.graph.nodes]

    assert fold_bn_modules(folded_gm) == 2

    assert [n.name for n in folded_gm.graph.nodes] == names_before
    assert isinstance(folded_gm.bn1, nn.Identity) and isinstance(folded_gm.bn2, nn.Identity)
    assert isinstance(folded_gm.bn3, nn.BatchNorm2d) and isinstance(folded_gm.bn4, nn.BatchNorm2d)
    assert folded_gm.conv1.bias is not None  # bias created for a bias-free conv
    x = torch.randn(2, 3, 17, 19, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = gm(x)
        got = folded_gm(x)
    # fp32 weights rounded once after a float64 fold: a few ulps of the outputs.
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_training_mode_bn_is_not_folded() -> None:
    gm = fx.symbolic_trace(Net().train())
    assert fold_bn_modules(gm) == 0
    assert isinstance(gm.bn1, nn.BatchNorm2d)


def test_batchnorm_subclass_is_not_folded() -> None:
    class NormAct(nn.BatchNorm2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(super().forward(x))

    class KeepNormAct(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return isinstance(m, NormAct) or super().is_leaf_module(m, qualname)

    model = nn.Sequential(nn.Conv2d(3, 4, 3), NormAct(4)).eval()
    gm = fx.GraphModule(model, KeepNormAct().trace(model))
    assert [n.op for n in gm.graph.nodes].count("call_module") == 2
    assert fold_bn_modules(gm) == 0
