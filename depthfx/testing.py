"""Helpers for property tests: sample valid Plans for an Analysis, randomise BN statistics,
and a tiny residual network whose merge can be checked by hand."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable

import torch
from torch import nn

from depthfx.passes.analyze import analyze
from depthfx.passes.chain_rewrite import ChainRewrite
from depthfx.plans import ChainPlan, Plan, chain_plan
from depthfx.records import Analysis, Chain


def random_chain_plan(
    chain: Chain, rng: random.Random, keep_prob: float = 0.5, prune_prob: float = 0.0
) -> ChainPlan:
    """A random valid (A, S, pruned) for one chain.

    Every original activation and every optional position is kept with ``keep_prob``; the
    chain end keeps its original flag. S ⊇ A ∪ barriers ∪ {L}, plus random extra boundaries, then
    closed under the residual rule (a body cut anywhere inside gets both ends in S). Each
    prunable conv is pruned with ``prune_prob``, except that every group and every projection
    residual's body keeps a conv.
    """
    length = chain.num_convs
    candidates = set(chain.activations) | set(chain.optional)
    act = {p for p in candidates if 0 < p < length and rng.random() < keep_prob}
    if length in chain.activations:
        act.add(length)
    merge = act | set(chain.barriers) | {length}
    merge |= {p for p in range(1, length) if rng.random() < keep_prob / 2}
    merge = chain.close_residuals(merge)
    pruned = {p for p in chain.prunable if rng.random() < prune_prob}
    bounds = sorted(merge | {0})
    groups = [set(range(i + 1, j + 1)) for i, j in itertools.pairwise(bounds)]
    bodies = [set(range(r.src + 1, r.dst + 1)) for r in chain.residuals if r.kind == "projection"]
    for must_keep in groups + bodies:
        if must_keep <= pruned:
            pruned.discard(rng.choice(sorted(must_keep)))
    return chain_plan([c.node for c in chain.convs], act, merge, pruned)


def random_plan(
    analysis: Analysis, seed: int, keep_prob: float = 0.5, prune_prob: float = 0.0
) -> Plan:
    """A random valid Plan over every chain of ``analysis`` (reproducible from ``seed``);
    ``prune_prob`` > 0 also prunes convs (LayerMerge)."""
    rng = random.Random(seed)
    return Plan.for_analysis(
        analysis, [random_chain_plan(c, rng, keep_prob, prune_prob) for c in analysis.chains]
    )


def merge_everything_plan(analysis: Analysis) -> Plan:
    """A = ∅ and S = forced boundaries only: every mergeable conv merged (the extreme case)."""
    chains = []
    for chain in analysis.chains:
        length = chain.num_convs
        act = {length} if length in chain.activations else set()
        merge = set(chain.barriers) | act | {length}
        chains.append(chain_plan([c.node for c in chain.convs], act, chain.close_residuals(merge)))
    return Plan.for_analysis(analysis, chains)


def original_plan(analysis: Analysis) -> Plan:
    """The original activation pattern with S = A ∪ barriers (merges only linear neighbours)."""
    chains = []
    for chain in analysis.chains:
        act = set(chain.activations)
        merge = act | set(chain.barriers) | {chain.num_convs}
        chains.append(chain_plan([c.node for c in chain.convs], act, chain.close_residuals(merge)))
    return Plan.for_analysis(analysis, chains)


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random running statistics and affine parameters for every BN of ``model`` (in place),
    so that a merge test exercises BN folding instead of folding identity BNs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                    m.bias.copy_(torch.rand(n, generator=generator) - 0.5)
    return model


class InvertedResidual(nn.Module):
    """MobileNetV2-style block: 1×1 expand → 3×3 depthwise → 1×1 project, plus the identity
    (one residual per block); used by the examples and the toy models of the tests."""

    def __init__(self, channels: int, expand: int = 4) -> None:
        super().__init__()
        hidden = channels * expand
        self.body = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class TinyResidual(nn.Module):
    """conv-BN-ReLU, conv-BN-ReLU, conv(3×1)-BN + identity around the last two convs, ReLU:
    one chain of 3 convs with a residual (1, 3), non-square kernel and padding."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 8, (3, 1), padding=(1, 0))
        self.bn3 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(x)))
        return self.relu(self.bn3(self.conv3(y)) + x)


def single_chain_plan(
    model: nn.Module, example: torch.Tensor, act: Iterable[int], merge: Iterable[int]
) -> Plan:
    """The Plan (A = ``act``, S = ``merge``) for a model with exactly one chain."""
    analysis = analyze(model, example)
    if len(analysis.chains) != 1:
        raise ValueError(f"the model has {len(analysis.chains)} chains, not one")
    (chain,) = analysis.chains
    return Plan.for_analysis(analysis, [chain_plan([c.node for c in chain.convs], act, merge)])


def chain_rewrite(
    model: nn.Module,
    example: torch.Tensor,
    act: Iterable[int],
    merge: Iterable[int],
    chain: int = 0,
) -> ChainRewrite:
    """The ChainRewrite of chain ``chain`` of a fresh capture of ``model`` under (A = ``act``,
    S = ``merge``), before any chain pass: for testing the passes one at a time."""
    analysis = analyze(model, example)
    target = analysis.chains[chain]
    cplan = chain_plan([c.node for c in target.convs], act, merge)
    gm = analysis.graph_module
    return ChainRewrite(gm, {n.name: n for n in gm.graph.nodes}, chain, target, cplan)
