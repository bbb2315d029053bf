"""A small CNN with every block kind the latency table must handle, and a fast protocol."""

from __future__ import annotations

import torch
from torch import nn

from depthfx.measure.setting import TimingProtocol

#: A short protocol: these tests check structure and bookkeeping, not precision.
FAST = TimingProtocol(warmup_s=0.0, blocks=3, block_s=0.002, retries=0)


class SmallNet(nn.Module):
    """stem 3×3 → inverted residual (1×1, dw 3×3, 1×1, identity add) → 3×3/s2 → 1×3 SiLU."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.body = nn.Sequential(
            nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
            nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
            nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8),
        )  # fmt: skip
        self.down = nn.Sequential(
            nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.BatchNorm2d(12), nn.ReLU()
        )
        self.last = nn.Conv2d(12, 16, (1, 3), padding=(0, 1))
        self.act = nn.SiLU()
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.body(x)
        x = self.act(self.last(self.down(x)))
        return self.head(x.mean((2, 3)))


def small_net() -> nn.Module:
    torch.manual_seed(0)
    net = SmallNet()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()
