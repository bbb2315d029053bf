"""Float64 references for the weight algebra: plain ``F.conv2d`` on explicitly padded inputs."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from depthfx.algebra import Padding4

MovedReference = Callable[[Tensor, Sequence[nn.Module], Padding4], Tensor]


def _moved_reference(x: Tensor, modules: Sequence[nn.Module], total: Padding4) -> Tensor:
    """modules[-1](…modules[0](F.pad(x, total))) with every conv applied with padding 0."""
    top, bottom, left, right = total
    y = F.pad(x.double(), (left, right, top, bottom))
    for module in modules:
        if isinstance(module, nn.Conv2d):
            bias = None if module.bias is None else module.bias.double()
            y = F.conv2d(
                y, module.weight.double(), bias, module.stride, 0, module.dilation, module.groups
            )
        else:
            y = module.double()(y)
    return y


@pytest.fixture
def moved_reference() -> MovedReference:
    """Reference semantics of a padding-moved group (see the module docstring)."""
    return _moved_reference


@pytest.fixture(autouse=True)
def _seeded(one_torch_thread: None) -> None:
    """Seeded; single-threaded, because these tensors are tiny and threads only contend."""
    torch.manual_seed(0)
