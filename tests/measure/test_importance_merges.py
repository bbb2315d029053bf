"""Importance with a latency table: each entry's network has the merge groups a plan deploys."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from importance_helpers import digits, trained_tiny

from depthfx.errors import DepthFXError
from depthfx.measure.importance import (
    build_network,
    entries_of,
    entry_plan,
    fastest_merges,
    measure_importance,
)
from depthfx.passes.analyze import analyze
from depthfx.passes.prepare import prepare
from depthfx.records import Analysis
from depthfx.solver import ImportanceTable, LatencyTable, optimal_merge_pattern, solve

X1 = torch.zeros(1, 1, 8, 8)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _table(analysis: Analysis, cheap: set[tuple[int, int, int]] = frozenset()) -> LatencyTable:
    """Merging costs (j − i)² (so DP1 splits), except ``cheap`` blocks, which cost 0.5."""
    times = {
        (c.index, i, j): 0.5 if (c.index, i, j) in cheap else float((j - i) ** 2)
        for c in analysis.chains
        for i, j in c.valid_blocks()
    }
    return LatencyTable(times, dict.fromkeys(times, 0.0))


@pytest.fixture(scope="module")
def setup() -> tuple[torch.nn.Module, Analysis]:
    model = trained_tiny()
    return model, analyze(model, X1, training=False)


def test_split_groups_keep_their_paddings(setup) -> None:
    _, analysis = setup
    merges = fastest_merges(analysis, _table(analysis))
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
    latency = _table(analysis, cheap)
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


@pytest.mark.parametrize("estimate", ["exact", "fisher"])
def test_proxy_scores_the_deployed_networks(setup, estimate: str) -> None:
    model, analysis = setup
    latency = _table(analysis)
    merges = fastest_merges(analysis, latency)
    x = digits()[0][1400:1528]
    table = measure_importance(
        model, X1, [x], analysis=analysis, score="kl", estimate=estimate, latency=latency,
        progress=False,
    )  # fmt: skip
    assert table.meta["fingerprint"]["merges"].startswith("fastest:")
    with torch.no_grad():
        base = prepare(model, entry_plan(analysis, None, merges), (X1,)).eval()
        ref = F.log_softmax(base(x), 1)
        changed = [k for k, v in table.scores.items() if v != 0]
        assert len(changed) >= 3
        for key in changed:
            out = prepare(model, entry_plan(analysis, key, merges), (X1,)).eval()(x)
            kl = float((ref.exp() * (ref - F.log_softmax(out, 1))).sum(1).mean())
            if estimate == "exact":
                assert table.scores[key] == pytest.approx(-kl, rel=1e-5, abs=1e-12)
            else:  # second order: same sign and order of magnitude
                assert table.scores[key] < 0 and 0.3 < table.scores[key] / -kl < 3


def test_a_table_of_another_model_is_refused(setup) -> None:
    _, analysis = setup
    times = {(0, 0, 1): 1.0, (0, 1, 2): 1.0, (0, 0, 2): 1.0}
    wrong = LatencyTable(times, dict.fromkeys(times, 0.0))
    with pytest.raises(DepthFXError, match="does not match the model"):
        fastest_merges(analysis, wrong)
