"""move_padding: inner convs pad nothing, each group pads its input by group_padding, the
groups are recorded; the moved network differs from the original only at the borders."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from depthfx.algebra import group_padding
from depthfx.models import load_model
from depthfx.passes.convert import convert
from depthfx.passes.insert_activations import insert_activations
from depthfx.passes.move_padding import move_padding
from depthfx.passes.prepare import prepare
from depthfx.passes.remove_activations import remove_activations
from depthfx.plans import PlanError
from depthfx.testing import TinyResidual, chain_rewrite, randomize_bn, single_chain_plan


def test_inner_convs_pad_nothing_and_the_group_pads_its_input() -> None:
    model, x = load_model("torchvision:resnet18").eval(), torch.randn(1, 3, 32, 32)
    merge = {1, 2, 4, 8, 12, 16}  # two single convs, then groups of 2 and 4 (strided ones)
    rewrite = chain_rewrite(model, x, merge - {1}, merge, chain=1)
    paddings = {c.module: rewrite.gm.get_submodule(c.module).padding for c in rewrite.chain.convs}
    remove_activations(rewrite)
    insert_activations(rewrite)
    values = dict(rewrite.value)

    move_padding(rewrite)

    rewrite.gm.graph.lint()
    bounds = [(r.start, r.end) for r in rewrite.records]
    assert bounds == [(0, 1), (1, 2), (2, 4), (4, 8), (8, 12), (12, 16)]
    assert set(rewrite.padded) == {2, 4, 8, 12}
    for record in rewrite.records:
        convs = rewrite.chain.convs[record.start : record.end]
        assert record.pad == group_padding(convs)
        assert record.input == values[record.start].name
        assert record.output == rewrite.linear[record.end].name
        modules = [rewrite.gm.get_submodule(c.module) for c in convs]
        if len(convs) == 1:
            assert modules[0].padding == paddings[convs[0].module]
            continue
        assert any(paddings[c.module] != (0, 0) for c in convs)
        assert all(type(m) is nn.Conv2d and m.padding == (0, 0) for m in modules)
        padded = rewrite.padded[record.start]
        top, bottom, left, right = record.pad
        assert padded.target is F.pad
        assert padded.args == (values[record.start], (left, right, top, bottom))
        assert rewrite.nodes[convs[0].node].args[0] is padded
        assert all(rewrite.nodes[c.node].args[0] is not padded for c in convs[1:])


def test_other_padding_modes_are_not_moved() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
    ).eval()  # fmt: skip
    rewrite = chain_rewrite(model, torch.randn(1, 3, 8, 8), set(), {2})
    remove_activations(rewrite)
    insert_activations(rewrite)
    with pytest.raises(PlanError, match="pads with mode 'reflect'"):
        move_padding(rewrite)


def test_moved_padding_differs_only_at_the_borders() -> None:
    """Merging convs 1-3 moves all padding to the input: equal to the un-moved network (ReLUs
    1, 2 removed) in the interior, different at the borders; the merged conv follows the moved
    network, which is why the move must happen before fine-tuning."""
    torch.manual_seed(0)
    model, x = randomize_bn(TinyResidual()).eval(), torch.randn(2, 3, 12, 12)
    plan = single_chain_plan(model, x, {3}, {3})
    prepared = prepare(model, plan, (x,)).eval()
    merged = convert(prepared, plan, (x,))

    unmoved = copy.deepcopy(model)

    def forward(x: torch.Tensor) -> torch.Tensor:  # the original without ReLUs 1 and 2
        x = unmoved.bn1(unmoved.conv1(x))
        y = unmoved.bn2(unmoved.conv2(x))
        return unmoved.relu(unmoved.bn3(unmoved.conv3(y)) + x)

    with torch.no_grad():
        want, moved, fused = forward(x), prepared(x), merged(x)
    torch.testing.assert_close(fused, moved, rtol=1e-5, atol=1e-5)
    # conv2 and conv3 pad (1, 1) rows and (1, 0) columns: only pixels within 2 rows / 1 column
    # of the border read a moved pad.
    interior = (slice(None), slice(None), slice(2, -2), slice(1, -1))
    torch.testing.assert_close(moved[interior], want[interior], rtol=1e-5, atol=1e-5)
    assert (moved - want).abs().max() > 1e-2
    assert (fused - want).abs().max() > 1e-2
