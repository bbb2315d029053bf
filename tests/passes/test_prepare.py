"""prepare: the chain passes in order, training behaviour, state_dict keys, plan matching.

Each chain pass has its own test file (test_remove_activations.py, …)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from depthfx.models import load_model
from depthfx.passes.align_residuals import align_residuals
from depthfx.passes.analyze import analyze
from depthfx.passes.convert import convert
from depthfx.passes.insert_activations import insert_activations
from depthfx.passes.move_padding import move_padding
from depthfx.passes.prepare import CHAIN_PASSES, prepare
from depthfx.passes.prune_convs import prune_convs
from depthfx.passes.remove_activations import remove_activations
from depthfx.plans import PlanError
from depthfx.testing import (
    TinyResidual,
    random_plan,
    randomize_bn,
    single_chain_plan,
)


def _randomized(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return randomize_bn(model).eval()


def test_chain_passes_in_order_and_public_names() -> None:
    import depthfx
    from depthfx import passes

    order = (prune_convs, remove_activations, insert_activations, move_padding, align_residuals)
    assert order == CHAIN_PASSES
    assert passes.CHAIN_PASSES is CHAIN_PASSES and passes.prepare is prepare
    assert (depthfx.prepare, depthfx.convert, depthfx.analyze) == (
        prepare,
        convert,
        analyze,
    )


def test_no_move_where_nothing_merges() -> None:
    """S = every position, A = the original: the prepared network is the original network."""
    model, x = _randomized(TinyResidual()), torch.randn(2, 3, 12, 12)
    prepared = prepare(model, single_chain_plan(model, x, {1, 2, 3}, {1, 2, 3}), (x,)).eval()
    with torch.no_grad():
        assert torch.equal(prepared(x), model(x))


@pytest.mark.parametrize("name", ["torchvision:resnet18", "timm:mobilenetv2_100"])
def test_state_dict_keys_and_no_mutation(name: str) -> None:
    model, x = _randomized(load_model(name)), torch.randn(1, 3, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        out = model(x)
    prepared = prepare(model, random_plan(analyze(model, x), seed=3), (x,))
    assert list(prepared.state_dict()) == list(before)
    for key, value in prepared.state_dict().items():
        assert torch.equal(value, before[key]), key
    # The user's model is untouched: same values, same modules, same function.
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p is not q for p, q in zip(model.parameters(), prepared.parameters(), strict=False))
    with torch.no_grad():
        assert torch.equal(model(x), out)


def test_fine_tuning_then_convert_is_exact() -> None:
    model, x = _randomized(TinyResidual()), torch.randn(4, 3, 12, 12)
    plan = single_chain_plan(model, x, {3}, {3})
    prepared = prepare(model, plan, (x,))
    assert prepared.training
    target = torch.randn(4, 8, 12, 12)
    optimiser = torch.optim.SGD(prepared.parameters(), lr=0.1)
    mean_before = prepared.bn2.running_mean.clone()
    losses = []
    for _ in range(3):
        optimiser.zero_grad()
        loss = F.mse_loss(prepared(x), target)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert not torch.equal(prepared.bn2.running_mean, mean_before)  # BN in train mode updates
    merged = convert(prepared, plan, (x,))  # checks itself
    prepared.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(x), prepared(x), rtol=1e-5, atol=1e-5)


def test_dropout_keeps_train_and_eval_behaviour() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Dropout(0.5), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
    )  # fmt: skip
    model, x = _randomized(model), torch.randn(2, 3, 8, 8)
    prepared = prepare(model, single_chain_plan(model, x, set(), {2}), (x,))
    assert not torch.equal(prepared(x), prepared(x))  # dropout active in train mode
    prepared.eval()
    assert torch.equal(prepared(x), prepared(x))


class FunctionalBN(nn.Module):
    """Convs with ``F.batch_norm`` on buffers (eps 1e-3) and functional activations."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 4, 3, stride=2, padding=1)
        for name in ("mean", "var", "weight", "bias"):
            self.register_buffer(name, torch.rand(6) + (0.5 if name == "var" else -0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.batch_norm(self.conv1(x), self.mean, self.var, self.weight, self.bias, eps=1e-3)
        return F.relu(self.conv2(F.relu(x)))


def test_functional_batch_norm_is_folded_with_its_eps() -> None:
    model, x = FunctionalBN().eval(), torch.randn(2, 3, 11, 11)
    analysis = analyze(model, x)
    (chain,) = analysis.chains
    assert chain.convs[0].bn_kind == "function"
    plan = single_chain_plan(model, x, {2}, {2})
    merged = convert(prepare(model, plan, (x,)), plan, (x,), rtol=1e-5, atol=1e-6)
    assert sum(isinstance(m, nn.Conv2d) for m in merged.modules()) == 1


def test_plan_for_another_model_is_refused() -> None:
    model, x = _randomized(TinyResidual()), torch.randn(1, 3, 8, 8)
    plan = single_chain_plan(model, x, {3}, {3})
    with pytest.raises(PlanError, match="not a chain of this model"):
        prepare(FunctionalBN(), plan, (x,))
