"""The backend's graph rewrite: equal to convert, honest about graph breaks."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from dynamo_helpers import CAPTURED, Net, assert_close, compile_depthfx, conv_calls, net_plan

from depthfx.dynamo import GraphBreakWarning
from depthfx.passes.analyze import analyze
from depthfx.passes.convert import convert
from depthfx.passes.prepare import prepare
from depthfx.testing import random_plan


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
    got = compile_depthfx(prepared, plan, x)
    assert_close(got, want)
    (gm,) = CAPTURED
    report = gm.meta["depthfx"]
    assert not report.skipped and not report.split_chains
    multi = sum(len(c.convs) - len(c.merge_pos) for c in plan.chains)
    assert multi > 0, "the plan merges nothing; pick another seed"
    # Every conv the plan merges away is gone from the graph handed to the delegate.
    assert conv_calls(gm) == report.convs_before - multi
    # Merged kernels are cropped to their input as convert crops them (at 32×32 the deepest
    # maps are 1×1, so the full kernels of deep groups would be much larger).
    emitted = sorted(tuple(b.shape) for n, b in gm.named_buffers() if n.endswith("_weight"))
    converted = [tuple(m.weight.shape) for m in merged.modules() if hasattr(m, "padding_mode")]
    assert emitted and all(shape in converted for shape in emitted), (emitted, converted)


def test_graph_break_inside_chain_is_reported_not_merged() -> None:
    # prepare() re-traces with torch.fx, which drops graph_break(): compile the model itself.
    # The stem merges exactly as is (its second conv is 1×1, no padding to move).
    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16)
    plain = Net(breaks=False).eval()
    plan = net_plan(plain, x)
    broken = Net(breaks=True).eval()
    for bn in (broken.block.bn1, broken.block.bn2):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    with torch.no_grad():
        want = broken(x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = compile_depthfx(broken, plan, x)
    assert_close(got, want)
    messages = [str(w.message) for w in caught if issubclass(w.category, GraphBreakWarning)]
    assert messages and all("block_conv1…block_conv2" in m for m in messages), messages
    merged = [m for gm in CAPTURED for m in gm.meta["depthfx"].merged]
    assert [m[0] for m in merged] == ["chain stem1…stem2"]  # the unbroken chain still merges
    assert sum(conv_calls(gm) for gm in CAPTURED) == 3  # stem merged, block convs kept


def test_pruned_plan_equals_convert() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 32, 32)
    plan = random_plan(analyze(model, (x,)), seed=0, prune_prob=0.6)
    assert any(c.pruned for c in plan.chains)
    prepared = prepare(model, plan, (x,)).eval()
    with torch.no_grad():
        want = convert(prepared, plan, (x,))(x)
    got = compile_depthfx(prepared, plan, x)
    assert_close(got, want)
    (gm,) = CAPTURED
    report = gm.meta["depthfx"]
    assert report.merged and not report.skipped and not report.split_chains
