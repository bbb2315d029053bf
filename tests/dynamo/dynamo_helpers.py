"""Shared by the depthfx backend tests: a capturing delegate and a small chain network."""

from __future__ import annotations

import torch
from torch import fx, nn
from torch._dynamo import register_backend

from depthfx.passes.analyze import analyze
from depthfx.plans import Plan, chain_plan

# Same tolerance as convert's own check (depthfx.algebra.check): float32 round-off of the merged
# kernels, scaled by the largest output magnitude.
RTOL, ATOL = 1e-4, 1e-5

CAPTURED: list[fx.GraphModule] = []


@register_backend(name="depthfx_test_capture")
def capture(gm: fx.GraphModule, example_inputs: list[torch.Tensor]):
    """Delegate that records the graph depthfx hands on, then runs it eagerly."""
    CAPTURED.append(gm)
    return gm.forward


def conv_calls(gm: fx.GraphModule) -> int:
    return sum(1 for n in gm.graph.nodes if n.op == "call_function" and n.target is torch.conv2d)


def compile_depthfx(model: nn.Module, plan, x: torch.Tensor) -> torch.Tensor:
    """Run ``model`` on ``x`` through the depthfx backend; the delegate's graphs go to CAPTURED."""
    torch._dynamo.reset()
    CAPTURED.clear()
    options = {"plan": plan, "backend": "depthfx_test_capture"}
    with torch.no_grad():
        return torch.compile(model, backend="depthfx", options=options)(x)


def assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    err = (got - want).abs().max().item()
    assert err <= ATOL + RTOL * want.abs().max().item(), err


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


def net_plan(model: nn.Module, x: torch.Tensor):
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
