"""Fixtures shared by the latency-table tests: a small CNN, its input and its table."""

from __future__ import annotations

import pytest
import torch
from latency_helpers import FAST, small_net
from torch import nn

from depthfx.solver import LatencyTable


@pytest.fixture(scope="module")
def net() -> nn.Module:
    return small_net()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def table(net: nn.Module, x: torch.Tensor) -> LatencyTable:
    return LatencyTable.measure(net, (x,), backend="onnxruntime", threads=1, protocol=FAST)
