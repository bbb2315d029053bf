"""SharedRegions: every region's outputs bit for bit as its own module computes them, with the
nodes regions have in common run once."""

from __future__ import annotations

import copy

import pytest
import torch
from importance_helpers import digits, trained_tiny
from torch import fx, nn

from depthfx.measure.importance import build_network, entries_of, entry_plan, fast_copy
from depthfx.measure.importance.regions import Region, RegionFinder, with_values
from depthfx.measure.importance.shared_regions import SharedRegions
from depthfx.passes.analyze import analyze
from depthfx.testing import InvertedResidual, randomize_bn

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("model_name", ["tiny", "inverted_residuals"])
def test_shared_run_equals_each_region_run_bit_for_bit(model_name: str) -> None:
    if model_name == "tiny":
        model, example, x = trained_tiny(), torch.zeros(1, 1, 8, 8), digits()[0][:16]
    else:
        torch.manual_seed(0)
        stem = [nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(inplace=True)]
        model = nn.Sequential(*stem, InvertedResidual(8), InvertedResidual(8))
        model = randomize_bn(model).eval()
        example, x = torch.zeros(1, 3, 12, 12), torch.randn(4, 3, 12, 12)
    analysis = fast_copy(analyze(model, example, training=False))
    base = build_network(analysis, entry_plan(analysis, None))
    find_region = RegionFinder(base, {n.name for n in analysis.graph_module.graph.nodes})
    regions = {
        key: find_region(build_network(analysis, entry_plan(analysis, key)))
        for key in entries_of(analysis)
    }
    shared = SharedRegions(regions)
    with_module = [k for k, r in regions.items() if r.module is not None]
    assert len(shared) == len(with_module) >= 4
    assert shared.steps < shared.nodes  # entries starting at one block share their first convs

    names = sorted({n for r in regions.values() for n in r.inputs})
    with torch.no_grad():
        _, found = with_values(base, names)(x)
        values = dict(zip(names, found, strict=True))
        yielded = []
        for key, outputs in shared.run(values):
            region = regions[key]
            assert region.module is not None
            want = region.module(*(values[n] for n in region.inputs))
            assert len(outputs) == len(want)
            for got, expected in zip(outputs, want, strict=True):
                assert torch.equal(got, expected), key
            yielded.append(key)
    assert sorted(yielded) == sorted(with_module)  # each once, as soon as it is computed


class _Scale(nn.Module):
    """A user module: its forward depends on an attribute ``repr`` does not show."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


class _ConvThen(nn.Module):
    def __init__(self, conv: nn.Conv2d, after: nn.Module) -> None:
        super().__init__()
        self.conv = conv
        self.after = after

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.after(self.conv(x)),)  # a region returns a tuple


def _region(conv: nn.Conv2d, after: nn.Module) -> Region:
    return Region(fx.symbolic_trace(_ConvThen(conv, after)), ["x"], ["y"], exact=False)


def test_builtin_modules_are_shared_by_content_user_modules_by_identity() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3)
    twin = copy.deepcopy(conv)  # another object, the same function
    other = nn.Conv2d(2, 3, 3)  # the same repr, other weights
    scale_a, scale_b = _Scale(2.0), _Scale(3.0)  # equal reprs, different functions
    regions = {
        "a": _region(conv, nn.ReLU()),
        "twin": _region(twin, nn.ReLU()),
        "other": _region(other, nn.ReLU()),
        "scale_a": _region(conv, scale_a),
        "scale_b": _region(conv, scale_b),
    }
    shared = SharedRegions(regions)
    # conv (shared by a, twin, scale_*), relu of it, other conv, its relu, two scales
    assert (shared.nodes, shared.steps) == (10, 6)
    x = torch.randn(2, 2, 6, 6)
    with torch.no_grad():
        got = dict(shared.run({"x": x}))
    assert torch.equal(got["a"][0], torch.relu(conv(x)))
    assert torch.equal(got["twin"][0], got["a"][0])
    assert torch.equal(got["other"][0], torch.relu(other(x)))
    assert torch.equal(got["scale_a"][0], conv(x) * 2.0)
    assert torch.equal(got["scale_b"][0], conv(x) * 3.0)
