"""insert_activations: a fresh activation at linear positions in A (after the residual add),
and the activation taken out of a kept timm BN+act called explicitly."""

from __future__ import annotations

import torch
from torch import nn

from depthfx.models import load_model
from depthfx.passes.analyze import analyze
from depthfx.passes.insert_activations import insert_activations
from depthfx.passes.prepare import prepare
from depthfx.passes.remove_activations import remove_activations
from depthfx.plans import Plan, chain_plan
from depthfx.testing import InvertedResidual, chain_rewrite


def _stem_and_block() -> nn.Module:
    """conv-BN-ReLU, then an inverted residual: 4 convs, identity (1, 4), position 4 linear."""
    stem = (nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
    return nn.Sequential(*stem, InvertedResidual(8)).eval()


def test_inserted_after_the_residual_add() -> None:
    rewrite = chain_rewrite(_stem_and_block(), torch.randn(1, 3, 8, 8), {1, 2, 3, 4}, {1, 2, 3, 4})
    (residual,) = rewrite.chain.residuals
    assert residual.dst == 4 and 4 not in rewrite.chain.activations
    add = rewrite.nodes[residual.add_node]

    remove_activations(rewrite)
    insert_activations(rewrite)

    rewrite.gm.graph.lint()
    act = rewrite.value[4]
    assert rewrite.linear[4] is add
    assert act.op == "call_module" and act.target == "depthfx_act_0_4"
    assert act.args == (add,) and list(add.users) == [act]
    template = rewrite.chain.activation_for(4)
    assert type(rewrite.gm.get_submodule(act.target)) is type(template.make())
    (output,) = [n for n in rewrite.gm.graph.nodes if n.op == "output"]
    assert output.args[0] is act


def test_nothing_inserted_outside_a() -> None:
    rewrite = chain_rewrite(_stem_and_block(), torch.randn(1, 3, 8, 8), {1, 2, 3}, {1, 2, 3, 4})
    count = len(rewrite.gm.graph.nodes)
    remove_activations(rewrite)
    insert_activations(rewrite)
    assert len(rewrite.gm.graph.nodes) == count
    add = rewrite.nodes[rewrite.chain.residuals[0].add_node]
    assert rewrite.value[4] is rewrite.linear[4] is add


def test_kept_norm_act_activation_is_called_explicitly() -> None:
    model, x = load_model("timm:mobilenetv2_100").eval(), torch.randn(1, 3, 32, 32)
    rewrite = chain_rewrite(model, x, {1, 5}, {1, 5, 52})
    slot = rewrite.chain.activations[1]
    act = rewrite.gm.get_submodule(slot.module)
    remove_activations(rewrite)
    insert_activations(rewrite)
    call = rewrite.value[1]
    assert call.target == slot.module.replace(".", "_") and call.args == (rewrite.nodes[slot.node],)
    assert rewrite.gm.get_submodule(call.target) is act
    assert rewrite.value[2] is rewrite.nodes[rewrite.chain.activations[2].node]  # dropped


def test_activation_inserted_at_a_linear_position() -> None:
    model, x = load_model("torchvision:mobilenet_v2").eval(), torch.randn(1, 3, 32, 32)
    analysis = analyze(model, x)
    (chain,) = analysis.chains
    p = min(chain.optional)  # the end of the first inverted residual: linear in the original
    act = set(chain.activations) | {p}
    cplan = chain_plan([c.node for c in chain.convs], act, set(range(1, chain.num_convs + 1)))
    prepared = prepare(model, Plan.for_analysis(analysis, [cplan]), (x,))
    inserted = prepared.get_submodule(f"depthfx_act_0_{p}")
    assert type(inserted) is type(chain.activations[1].template)
    users = [n for n in prepared.graph.nodes if n.target == f"depthfx_act_0_{p}"]
    assert len(users) == 1
