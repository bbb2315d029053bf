"""The depthfx torch.compile backend entry point: discoverable, options checked, inference-only."""

from __future__ import annotations

import pytest
import torch
from dynamo_helpers import Net, net_plan

from depthfx.errors import DepthFXError


def test_backend_is_discoverable_by_name() -> None:
    from torch._dynamo.backends.registry import lookup_backend

    from depthfx.dynamo import backend

    assert "depthfx" in torch._dynamo.list_backends()
    assert lookup_backend("depthfx") is backend


def test_refuses_training() -> None:
    model = Net(breaks=False)
    x = torch.randn(1, 3, 16, 16)
    plan = net_plan(model, x)
    torch._dynamo.reset()
    compiled = torch.compile(model.eval(), backend="depthfx", options={"plan": plan})
    with pytest.raises(Exception, match="inference-only") as info:
        compiled(x)  # grad enabled, parameters require grad
    assert isinstance(info.value.__cause__ or info.value.inner_exception, DepthFXError)
