"""The depthfx torch.compile backend: discoverable, equal to convert, honest about breaks."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from torch import fx, nn
from torch._dynamo import register_backend

from depthfx.dynamo import GraphBreakWarning
from depthfx.errors import DepthFXError
from depthfx.passes.analyze import analyze
from depthfx.passes.convert import convert
from depthfx.passes.prepare import prepare
from depthfx.plans import Plan, chain_plan
from depthfx.testing import random_plan

# Same tolerance as convert's own check (depthfx.algebra.check): float32 round-off of the merged
# kernels, scaled by the largest output magnitude.
RTOL, ATOL = 1e-4, 1e-5

CAPTURED: list[fx.GraphModule] = []


@register_backend(name="depthfx_test_capture")
def _capture(gm: fx.GraphModule, example_inputs: list[torch.Tensor]):
    """Delegate that records the graph depthfx hands on, then runs it eagerly."""
    CAPTURED.append(gm)
    return gm.forward


def _conv_calls(gm: fx.GraphModule) -> int:
    return sum(1 for n in gm.graph.nodes if n.op == "call_function" and n.target is torch.conv2d)


def _compile(model: nn.Module, plan, x: torch.Tensor) -> torch.Tensor:
    torch._dynamo.reset()
    CAPTURED.clear()
    options = {"plan": plan, "backend": "depthfx_test_capture"}
    with torch.no_grad():
        return torch.compile(model, backend="depthfx", options=options)(x)


def _assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    err = (got - want).abs().max().item()
    assert err <= ATOL + RTOL * want.abs().max().item(), err


def test_backend_is_discoverable_by_name() -> None:
    from torch._dynamo.backends.registry import lookup_backend

    from depthfx.dynamo import backend

    assert "depthfx" in torch._dynamo.list_backends()
    assert lookup_backend("depthfx") is backend


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_equals_convert_and_merges(name: str) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    x = torch.randn(2, 3, 32, 32)
    plan = random_plan(analyze(model, (x,)), seed=1)
    prepared = prepare(model, plan, (x,)).eval()
    merged = convert(prepared, plan, (x,))
    with torch.no_grad():
        want = merged(x)
    got = _compile(prepared, plan, x)
    _assert_close(got, want)
    (gm,) = CAPTURED
    report = gm.meta["depthfx"]
    assert not report.skipped and not report.split_chains
    multi = sum(len(c.convs) - len(c.merge_pos) for c in plan.chains)
    assert multi > 0, "the plan merges nothing; pick another seed"
    # Every conv the plan merges away is gone from the graph handed to the delegate.
    assert _conv_calls(gm) == report.convs_before - multi


class Block(nn.Module):
    def __init__(self, channels: int, *, breaks: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(channels)
        self.breaks = breaks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn1(self.conv1(x))
        if self.breaks:
            torch._dynamo.graph_break()
        return torch.relu(self.bn2(self.conv2(y)) + x)


class Net(nn.Module):
    """stem chain (3×3 then 1×1: mergeable as is) | pool | residual block (break inside)."""

    def __init__(self, *, breaks: bool) -> None:
        super().__init__()
        self.stem1 = nn.Conv2d(3, 8, 3, padding=1)
        self.stem2 = nn.Conv2d(8, 8, 1)
        self.block = Block(8, breaks=breaks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem2(self.stem1(x))
        return self.block(nn.functional.max_pool2d(x, 2))


def _net_plan(model: nn.Module, x: torch.Tensor):
    analysis = analyze(model, (x,))
    chains = {tuple(c.node for c in chain.convs): chain for chain in analysis.chains}
    stem = chains[("stem1", "stem2")]
    block = chains[("block_conv1", "block_conv2")]
    return Plan.for_analysis(
        analysis,
        [
            chain_plan([c.node for c in stem.convs], [], [2]),
            chain_plan([c.node for c in block.convs], [2], [2]),  # conv1+conv2+identity merged
        ],
    )


def test_graph_break_inside_chain_is_reported_not_merged() -> None:
    # prepare() re-traces with torch.fx, which drops graph_break(): compile the model itself.
    # The stem merges exactly as is (its second conv is 1×1, no padding to move).
    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16)
    plain = Net(breaks=False).eval()
    plan = _net_plan(plain, x)
    broken = Net(breaks=True).eval()
    for bn in (broken.block.bn1, broken.block.bn2):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    with torch.no_grad():
        want = broken(x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = _compile(broken, plan, x)
    _assert_close(got, want)
    messages = [str(w.message) for w in caught if issubclass(w.category, GraphBreakWarning)]
    assert messages and all("block_conv1…block_conv2" in m for m in messages), messages
    merged = [m for gm in CAPTURED for m in gm.meta["depthfx"].merged]
    assert [m[0] for m in merged] == ["chain stem1…stem2"]  # the unbroken chain still merges
    assert sum(_conv_calls(gm) for gm in CAPTURED) == 3  # stem merged, block convs kept


def test_refuses_training() -> None:
    model = Net(breaks=False)
    x = torch.randn(1, 3, 16, 16)
    plan = _net_plan(model, x)
    torch._dynamo.reset()
    compiled = torch.compile(model.eval(), backend="depthfx", options={"plan": plan})
    with pytest.raises(Exception, match="inference-only") as info:
        compiled(x)  # grad enabled, parameters require grad
    assert isinstance(info.value.__cause__ or info.value.inner_exception, DepthFXError)
