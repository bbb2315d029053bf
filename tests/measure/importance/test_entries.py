"""Entries and their plans; with a latency table each entry's network has the merge groups a plan
deploys (fastest_merges)."""

from __future__ import annotations

import pytest
import torch
from importance_helpers import X1, digits, toy_latency, trained_tiny

from depthfx.errors import DepthFXError
from depthfx.measure.importance import build_network, entries_of, entry_plan, fastest_merges
from depthfx.passes.analyze import analyze
from depthfx.records import Analysis
from depthfx.solver import ImportanceTable, LatencyTable, optimal_merge_pattern, solve

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup() -> tuple[torch.nn.Module, Analysis]:
    model = trained_tiny()
    return model, analyze(model, X1, training=False)


def test_split_groups_keep_their_paddings(setup) -> None:
    _, analysis = setup
    merges = fastest_merges(analysis, toy_latency(analysis))
    plan = entry_plan(analysis, (0, 0, 3, 1, 1), merges)
    # no merge pays: every conv is its own group, so no padding moves (S = A would move 3)
    assert list(plan.chains[0].merge_pos) == [1, 2, 3, 4]
    net = build_network(analysis, plan)
    assert [net.get_submodule(n).padding for n in ("c1", "c2", "c3")] == [(1, 1)] * 3
    paper = build_network(analysis, entry_plan(analysis, (0, 0, 3, 1, 1)))
    x = digits()[0][:8]
    with torch.no_grad():
        assert not torch.allclose(net(x), paper(x), atol=1e-4)  # they differ at the borders


def test_entry_groups_are_the_groups_the_solver_deploys(setup) -> None:
    """For every block of a DP solution, the entry's network has the solution's S there."""
    _, analysis = setup
    chain = analysis.chains[0]
    cheap = {(0, i, j) for i, j in chain.valid_blocks() if j - i == 2}
    latency = toy_latency(analysis, cheap)
    merges = fastest_merges(analysis, latency)
    keys = entries_of(analysis)
    importance = ImportanceTable(
        {k: -float(k[2] - k[1]) for k in keys},
        norm="none",
        default_acts={c.index: sorted(c.activations) for c in analysis.chains},
    )
    checked = 0
    for budget in (3.5, 4.5, 6.0, 8.0, 20.0):
        solution = solve(latency, importance, budget=budget, prec=10)
        for cs in solution.chains:
            for st, end, sa, ea in cs.blocks:
                plan = entry_plan(analysis, (cs.chain, st, end, sa, ea), merges)
                inside = [p for p in plan.chains[cs.chain].merge_pos if st < p <= end]
                assert inside == [p for p in cs.merge_pos if st < p <= end]
                checked += 1
    assert checked >= 8
    # and the rule is the fastest pattern for the entry's activations
    plan = entry_plan(analysis, (0, 0, 4, 1, 1), merges)
    acts = plan.chains[0].act_pos
    assert list(plan.chains[0].merge_pos) == optimal_merge_pattern(acts, latency, 0).merge_pos


def test_a_table_of_another_model_is_refused(setup) -> None:
    _, analysis = setup
    times = {(0, 0, 1): 1.0, (0, 1, 2): 1.0, (0, 0, 2): 1.0}
    wrong = LatencyTable(times, dict.fromkeys(times, 0.0))
    with pytest.raises(DepthFXError, match="does not match the model"):
        fastest_merges(analysis, wrong)
