"""RegionFinder: the split of every entry network into the base's prefix, the entry's region
and the base's suffix is exact."""

from __future__ import annotations

import pytest
import torch
from importance_helpers import X1, digits, trained_tiny

from depthfx.measure.importance import build_network, entries_of, entry_plan
from depthfx.measure.importance.regions import RegionFinder, with_values
from depthfx.passes.analyze import analyze
from depthfx.testing import TinyResidual

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run_with(base: torch.fx.GraphModule, overrides: dict[str, torch.Tensor], x: torch.Tensor):
    """The base network with some node values replaced (the entry's frontier values)."""

    class Override(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node):
            return overrides[n.name] if n.name in overrides else super().run_node(n)

    return Override(base).run(x)


@pytest.mark.parametrize("model_name", ["tiny", "residual"])
def test_fisher_regions_recompose_every_entry_network(model_name: str) -> None:
    """Prefix values of the base → the entry's region → the base's suffix is the entry network:
    the split the second-order estimate relies on is exact, for every extended block."""
    if model_name == "tiny":
        model, x_example, x = trained_tiny(), X1, digits()[0][:16]
    else:
        torch.manual_seed(0)
        model, x_example = TinyResidual().eval(), torch.zeros(1, 3, 16, 16)
        x = torch.randn(4, 3, 16, 16)
    analysis = analyze(model, x_example, training=False)
    base = build_network(analysis, entry_plan(analysis, None))
    find_region = RegionFinder(base, {n.name for n in analysis.graph_module.graph.nodes})
    regions = 0
    for key in entries_of(analysis):
        entry = build_network(analysis, entry_plan(analysis, key))
        region = find_region(entry)
        with torch.no_grad():
            want = entry(x)
            if region.module is None:
                torch.testing.assert_close(base(x), want, rtol=0, atol=0)
                continue
            regions += 1
            _, found = with_values(base, region.inputs)(x)
            result = region.module(*found)
            if region.exact:
                torch.testing.assert_close(result[0], want, rtol=1e-5, atol=1e-6)
            else:
                got = _run_with(base, dict(zip(region.outputs, result, strict=True)), x)
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
                # the region is smaller than the rest of the network
                assert len(region.module.graph.nodes) < len(entry.graph.nodes)
    assert regions >= 2
