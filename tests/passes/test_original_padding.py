"""original_padding (the approximate mode): the view is the network with the plan's
activations but every conv padding as in the original (equal to the plan that merges nothing,
train and eval); it differs from the prepared network near the borders only, and that border
error is what ``border_error`` reports."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import depthfx
from depthfx.models import load_model
from depthfx.passes.analyze import analyze
from depthfx.passes.convert import convert
from depthfx.passes.original_padding import border_error, original_padding_view
from depthfx.passes.prepare import prepare
from depthfx.plans import Plan
from depthfx.testing import InvertedResidual, merge_everything_plan, random_plan, randomize_bn


def _strided() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        InvertedResidual(8, 2),
        nn.Conv2d(8, 8, 3, 1, 2, 2, 2), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 5, 2, 2), nn.BatchNorm2d(8), nn.ReLU(),
    )  # fmt: skip


def _unmerged(plan: Plan) -> Plan:
    """The same activations and pruned convs, every conv its own group (nothing moves)."""
    chains = tuple(
        dataclasses.replace(c, merge_pos=tuple(range(1, c.num_convs + 1))) for c in plan.chains
    )
    return dataclasses.replace(plan, chains=chains)


@pytest.mark.parametrize("seed", [None, 0, 1])
@pytest.mark.parametrize("name", ["strided", "resnet18"])
def test_view_is_the_network_with_original_paddings(name: str, seed: int | None) -> None:
    torch.manual_seed(0)
    if name == "strided":
        model, x = randomize_bn(_strided()).eval(), torch.randn(2, 3, 20, 20)
    else:
        model, x = (
            randomize_bn(load_model("torchvision:resnet18")).eval(),
            torch.randn(2, 3, 32, 32),
        )
    analysis = analyze(model, (x[:1],))
    plan = merge_everything_plan(analysis) if seed is None else random_plan(analysis, seed, 0.3)
    prepared = prepare(model, plan, (x[:1],))
    view, groups = original_padding_view(prepared)
    reference = prepare(model, _unmerged(plan), (x[:1],))
    if seed is None:
        assert groups > 0
    for training in (False, True):
        reference.load_state_dict(prepared.state_dict())
        prepared.train(training)
        reference.train(training)
        with torch.no_grad():
            torch.testing.assert_close(view(x), reference(x), rtol=1e-5, atol=1e-5)


def test_border_error_is_at_the_borders_and_measured() -> None:
    torch.manual_seed(0)
    model, x = randomize_bn(_strided()).eval(), torch.randn(2, 3, 40, 40)
    plan = merge_everything_plan(analyze(model, (x[:1],)))
    prepared = prepare(model, plan, (x[:1],)).eval()
    view, _ = original_padding_view(prepared)
    err, scale = border_error(prepared, view, x)
    with torch.no_grad():
        diff = (prepared(x) - view(x)).abs()
    assert err == pytest.approx(float(diff.max())) and scale > 0
    assert err > 1e-3 * scale  # the approximation is real
    # outputs whose receptive field stays away from the padding agree
    torch.testing.assert_close(diff[:, :, 4:-4, 4:-4], torch.zeros_like(diff[:, :, 4:-4, 4:-4]),
                               rtol=0, atol=1e-5)  # fmt: skip


def test_approximate_finetune_trains_the_prepared_parameters() -> None:
    torch.manual_seed(0)
    model, x = _strided().eval(), torch.randn(1, 3, 20, 20)
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    model = nn.Sequential(*model, *head).eval()
    plan = merge_everything_plan(analyze(model, (x,)))
    prepared = prepare(model, plan, (x,))
    before = {k: v.clone() for k, v in prepared.state_dict().items()}
    data = (torch.randn(48, 3, 20, 20), torch.randint(0, 3, (48,)))
    depthfx.finetune(prepared, data, steps=3, batch_size=16, lr=0.05, borders="approximate",
                     progress=False)  # fmt: skip
    assert prepared.depthfx_finetune["borders"] == "approximate"
    assert prepared.depthfx_finetune["rewritten"] > 0
    assert any(not torch.equal(v, before[k]) for k, v in prepared.state_dict().items())
    merged = convert(prepared, plan, (x,))  # exact to the prepared network, not to the view
    with torch.no_grad():
        torch.testing.assert_close(merged(x), prepared(x), rtol=1e-4, atol=1e-5)


def test_unknown_borders_value_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(18, 2))
    with pytest.raises(depthfx.DepthFXError, match="borders="):
        depthfx.finetune(model, (torch.randn(4, 1, 5, 5), torch.zeros(4, dtype=torch.long)),
                         steps=1, borders="approx", progress=False)  # fmt: skip
