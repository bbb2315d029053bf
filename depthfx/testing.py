"""Helpers for property tests: sample valid Plans for an Analysis."""

from __future__ import annotations

import random

from depthfx.analysis import Analysis, Chain
from depthfx.plan import ChainPlan, Plan, chain_plan


def random_chain_plan(chain: Chain, rng: random.Random, keep_prob: float = 0.5) -> ChainPlan:
    """A random valid (A, S) for one chain.

    Every original activation and every optional position is kept with ``keep_prob``; the
    chain end keeps its original flag. S ⊇ A ∪ breaks ∪ {L}, plus random extra boundaries, then
    closed under the residual rule (a body cut anywhere inside gets both ends in S).
    """
    length = chain.num_convs
    candidates = set(chain.activations) | set(chain.optional)
    act = {p for p in candidates if 0 < p < length and rng.random() < keep_prob}
    if length in chain.activations:
        act.add(length)
    merge = act | set(chain.breaks) | {length}
    merge |= {p for p in range(1, length) if rng.random() < keep_prob / 2}
    return chain_plan([c.node for c in chain.convs], act, _close_residuals(chain, merge))


def random_plan(analysis: Analysis, seed: int, keep_prob: float = 0.5) -> Plan:
    """A random valid Plan over every chain of ``analysis`` (reproducible from ``seed``)."""
    rng = random.Random(seed)
    return plan_for(analysis, [random_chain_plan(c, rng, keep_prob) for c in analysis.chains])


def merge_everything_plan(analysis: Analysis) -> Plan:
    """A = ∅ and S = forced boundaries only: every mergeable conv merged (the extreme case)."""
    chains = []
    for chain in analysis.chains:
        length = chain.num_convs
        act = {length} if length in chain.activations else set()
        merge = set(chain.breaks) | act | {length}
        chains.append(
            chain_plan([c.node for c in chain.convs], act, _close_residuals(chain, merge))
        )
    return plan_for(analysis, chains)


def original_plan(analysis: Analysis) -> Plan:
    """The original activation pattern with S = A ∪ breaks (merges only linear neighbours)."""
    chains = []
    for chain in analysis.chains:
        act = set(chain.activations)
        merge = act | set(chain.breaks) | {chain.num_convs}
        chains.append(
            chain_plan([c.node for c in chain.convs], act, _close_residuals(chain, merge))
        )
    return plan_for(analysis, chains)


def _close_residuals(chain: Chain, merge: set[int]) -> set[int]:
    merge = set(merge) - {0}
    changed = True
    while changed:
        changed = False
        for r in chain.residuals:
            if any(r.src < p < r.dst for p in merge) and not {r.src, r.dst} <= merge | {0}:
                merge |= {r.src, r.dst} - {0}
                changed = True
    return merge


def plan_for(analysis: Analysis, chains: list[ChainPlan]) -> Plan:
    """Wrap chain plans into a Plan that records how ``analysis`` was made."""
    return Plan(
        chains=tuple(chains),
        input_shapes=tuple(tuple(s) for s in analysis.example_shapes),
        strided=analysis.options["strided"],
        exclude=tuple(analysis.options["exclude"]),
    )
