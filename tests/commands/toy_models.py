"""Small models for CLI tests, loaded as ``path/to/toy_models.py:FACTORY`` specs."""

from __future__ import annotations

import torch
from torch import nn

from depthfx.testing import InvertedResidual


def _bn_stats(model: nn.Module) -> nn.Module:
    generator = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
    return model


def tiny_mobilenet() -> nn.Module:
    """A stem and three inverted residuals: one chain of 10 convs with 3 residuals."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU6(inplace=True),
        InvertedResidual(16),
        InvertedResidual(16),
        InvertedResidual(16),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    return _bn_stats(model).eval()


class DataDependent(nn.Module):
    """Branches on a tensor value: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y if y.sum() > 0 else -y


def untraceable() -> nn.Module:
    return nn.Sequential(DataDependent(), nn.ReLU(), nn.Conv2d(8, 8, 3)).eval()
