"""The entries of an importance table and the plan of each entry's network (spec §3.2).

An entry is an extended block (chain, st, end, st_act, end_act). Its network is the model
prepared as the paper's ``fix_act(new_A)``: A = (default \\ {p : st < p < end}) ∪ ({st} if
st_act) ∪ ({end} if end_act) and S = A ∪ barriers (closed under the residual rule), every other
chain keeping its original pattern; or, with a latency table, S = the fastest merge pattern for A
(:func:`fastest_merges`), the groups a deployed plan would have.
"""

from __future__ import annotations

from collections.abc import Callable

from depthfx.errors import DepthFXError
from depthfx.plans import Plan, chain_plan
from depthfx.records import Analysis
from depthfx.solver import ImportanceKey, LatencyTable, optimal_merge_pattern


def entries_of(analysis: Analysis, exclude_zeros: bool = True) -> list[ImportanceKey]:
    """Every extended block of every chain, keyed (chain, st, end, st_act, end_act), in the
    solver's order."""
    return [
        (chain.index, *blk)
        for chain in analysis.chains
        for blk in chain.extended_blocks(exclude_zeros=exclude_zeros)
    ]


#: Merge boundaries S of a chain's network for its kept activations A: (chain index, A) → S.
MergeRule = Callable[[int, frozenset[int]], set[int]]
#: The plan of a key's network (the proxies default to :func:`entry_plan`).
PlanOf = Callable[[ImportanceKey], Plan]


def fastest_merges(analysis: Analysis, latency: LatencyTable) -> MergeRule:
    """S = the fastest merge pattern for A on ``latency`` (spec §4.5): the network a plan with
    those activations deploys. Checked against the analysis; memoised (the base pattern of
    every other chain repeats in every entry)."""
    for chain in analysis.chains:
        if latency.lengths.get(chain.index) != chain.num_convs:
            raise DepthFXError(
                f"the latency table does not match the model: chain {chain.index} has "
                f"{chain.num_convs} convs, the table {latency.lengths.get(chain.index)}"
            )
    memo: dict[tuple[int, frozenset[int]], set[int]] = {}

    def merges(chain: int, act: frozenset[int]) -> set[int]:
        if (chain, act) not in memo:
            memo[chain, act] = set(optimal_merge_pattern(act, latency, chain).merge_pos)
        return memo[chain, act]

    return merges


def entry_plan(
    analysis: Analysis, key: ImportanceKey | None, merges: MergeRule | None = None
) -> Plan:
    """The plan of one entry's network (``key=None``: the base network, original pattern).

    Merge groups: S = A, the paper's ``fix_act(new_A)`` (spec §3.2), unless ``merges`` gives S
    for A (:func:`fastest_merges`: the groups a deployed plan would have). The groups decide
    where paddings move, so they change the network at the borders."""
    chains = []
    for chain in analysis.chains:
        act = set(chain.activations)
        if key is not None and chain.index == key[0]:
            _, st, end, st_act, end_act = key
            act = {p for p in act if not st < p < end}
            act |= ({st} if st_act else set()) | ({end} if end_act else set())
            act.discard(0)
        groups = act if merges is None else merges(chain.index, frozenset(act))
        merge = groups | set(chain.barriers) | {chain.num_convs}
        chains.append(chain_plan([c.node for c in chain.convs], act, chain.close_residuals(merge)))
    return Plan.for_analysis(analysis, chains)


__all__ = ["MergeRule", "PlanOf", "entries_of", "entry_plan", "fastest_merges"]
