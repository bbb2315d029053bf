"""remove_activations: bypasses exactly the activation sites not in A; empties timm BN+act."""

from __future__ import annotations

import torch
from torch import nn

from depthfx.models import load_model
from depthfx.passes.analyze import analyze
from depthfx.passes.prepare import prepare
from depthfx.passes.remove_activations import remove_activations
from depthfx.plans import Plan, chain_plan
from depthfx.testing import chain_rewrite, randomize_bn


def test_bypasses_exactly_the_slots_not_in_a() -> None:
    model, x = load_model("torchvision:resnet18").eval(), torch.randn(1, 3, 32, 32)
    keep = {1, 4, 7, 16}
    rewrite = chain_rewrite(model, x, keep, range(1, 17), chain=1)
    slots = {p: slot.node for p, slot in rewrite.chain.activations.items()}
    assert len(slots) == 16 and keep < set(slots)
    inputs = {p: rewrite.nodes[name].args[0] for p, name in slots.items()}
    users = {p: list(rewrite.nodes[name].users) for p, name in slots.items()}

    remove_activations(rewrite)

    rewrite.gm.graph.lint()
    names = {n.name for n in rewrite.gm.graph.nodes}
    assert {p for p, name in slots.items() if name in names} == keep
    for p, name in slots.items():
        assert rewrite.linear[p] is inputs[p]
        assert rewrite.value[p] is (rewrite.nodes[name] if p in keep else inputs[p])
        if p not in keep:  # the bypassed site's users read its input now
            assert all(inputs[p] in user.all_input_nodes for user in users[p])
    assert isinstance(rewrite.gm.get_submodule("layer1.0.relu"), nn.ReLU)  # module kept
    assert rewrite.detached == {}


def test_timm_norm_act_loses_its_activation_and_keeps_it_for_a() -> None:
    model, x = load_model("timm:mobilenetv2_100").eval(), torch.randn(1, 3, 32, 32)
    keep = {1, 5}
    rewrite = chain_rewrite(model, x, keep, {1, 5, 52})
    slots = {p: s for p, s in rewrite.chain.activations.items() if s.kind == "norm_act"}
    assert keep <= set(slots) and len(slots) > len(keep)
    acts = {p: rewrite.gm.get_submodule(s.module) for p, s in slots.items()}
    names_before = [n.name for n in rewrite.gm.graph.nodes]

    remove_activations(rewrite)

    assert [n.name for n in rewrite.gm.graph.nodes] == names_before  # nothing erased
    for p, slot in slots.items():
        assert isinstance(rewrite.gm.get_submodule(slot.module), nn.Identity)
        assert rewrite.linear[p] is rewrite.value[p] is rewrite.nodes[slot.node]
    assert set(rewrite.detached) == keep
    for p in keep:
        name, act = rewrite.detached[p]
        assert name == slots[p].module.replace(".", "_") and act is acts[p]


def test_removing_one_call_site_of_a_shared_module() -> None:
    """torchvision BasicBlock calls one ReLU twice; removing one site keeps the other."""
    model, x = randomize_bn(load_model("torchvision:resnet18")).eval(), torch.randn(1, 3, 32, 32)
    analysis = analyze(model, x)
    chain = analysis.chains[1]
    act = set(chain.activations) - {1}
    cplan = chain_plan([c.node for c in chain.convs], act, set(range(1, chain.num_convs + 1)))
    stem = analysis.chains[0]
    splan = chain_plan([c.node for c in stem.convs], set(stem.activations), {1})
    prepared = prepare(model, Plan.for_analysis(analysis, [splan, cplan]), (x,))
    calls = [n for n in prepared.graph.nodes if n.target == "layer1.0.relu"]
    assert len(calls) == 1
