"""The proxy method, both estimates: zeros and signs, non-classifiers, the deployed merge
groups, and the scores each estimate can give."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from importance_helpers import (
    X1,
    digits,
    recalibrated_scores_hold,
    tiny_tables,
    toy_latency,
    trained_tiny,
    unchanged,
)

import depthfx
from depthfx.errors import DepthFXError
from depthfx.measure.importance import entry_plan, fastest_merges, measure_importance
from depthfx.passes.analyze import analyze
from depthfx.passes.prepare import prepare
from depthfx.records import Analysis

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup() -> tuple[torch.nn.Module, Analysis]:
    model = trained_tiny()
    return model, analyze(model, X1, training=False)


@pytest.mark.parametrize("estimate", ["exact", "fisher"])
def test_unchanged_entries_score_exactly_zero_and_removals_negative(estimate: str) -> None:
    _, analysis, table = tiny_tables(estimate)
    zeros = [k for k in table.scores if unchanged(analysis, k)]
    # single-conv blocks with the original flags, and (1, 3): merging a linear pair
    assert {(0, 0, 1, 1, 1), (0, 1, 2, 1, 0), (0, 2, 3, 0, 1), (0, 1, 3, 1, 1)} <= set(zeros)
    assert all(table.scores[k] == 0.0 for k in zeros)
    changed = [k for k in table.scores if not unchanged(analysis, k)]
    assert changed and all(table.scores[k] < 0 for k in changed)


def test_mse_for_non_classifiers() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3)
    ).eval()
    x = torch.randn(1, 3, 10, 10)
    table = measure_importance(model, x, [torch.randn(8, 3, 10, 10)], progress=False)
    assert table.score == "neg_rel_mse"
    with torch.no_grad():
        a = analyze(model, x, training=False)
        ref = model(torch.randn(0, 3, 10, 10))  # shape only
    assert ref.shape[1] == 4 and len(a.chains) == 1
    merged = next(k for k in table.scores if k[1:3] == (0, 2))
    assert table.scores[merged] < 0 and table.scores[(0, 0, 1, 1, 1)] == 0.0


@pytest.mark.parametrize("estimate", ["exact", "fisher"])
def test_proxy_scores_the_deployed_networks(setup, estimate: str) -> None:
    model, analysis = setup
    latency = toy_latency(analysis)
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


def test_accuracy_score_needs_the_exact_estimate() -> None:
    model, analysis, _ = tiny_tables()
    x, y = digits()
    with pytest.raises(depthfx.errors.DepthFXError, match="estimate='exact'"):
        measure_importance(
            model, X1, [(x[:32], y[:32])], analysis=analysis, score="accuracy", progress=False
        )


def test_proxy_with_bn_recalibration_on_trained_tiny() -> None:
    model = trained_tiny()
    analysis = analyze(model, X1, training=False)
    x, y = digits()
    data = list(zip(x[1400:1528].split(32), y[1400:1528].split(32), strict=True))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    table = measure_importance(
        model, X1, data, analysis=analysis, score="kl", bn_recalibration=True, progress=False
    )
    plain = measure_importance(
        model, X1, data, analysis=analysis, score="kl", estimate="exact", progress=False
    )
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched
    assert table.meta["fingerprint"]["bn_recalibration"] is True
    for key, value in table.scores.items():
        assert value <= 0.0
        if unchanged(analysis, key):
            assert value == 0.0
    changed = [k for k in table.scores if not unchanged(analysis, k)]
    # re-estimating BN repairs part of the damage: on average the entries lose less
    assert sum(table.scores[k] for k in changed) > sum(plain.scores[k] for k in changed)
    with pytest.raises(DepthFXError, match="needs data"):
        measure_importance(model, X1, None, analysis=analysis, bn_recalibration=True)


def test_bn_recalibrated_proxy_is_each_whole_network_re_estimated(setup) -> None:
    """Shared heads change nothing: every score is the KL of the entry's whole prepared
    network, BN re-estimated on the same batches, against the base network re-estimated so."""
    model, analysis = setup
    latency = toy_latency(analysis)
    merges = fastest_merges(analysis, latency)
    x = digits()[0][1400:1496]
    batches = list(x.split(32))  # three batches: the cumulative average spans batches
    table = measure_importance(
        model, X1, [x], analysis=analysis, score="kl", bn_recalibration=True, batch_size=32,
        latency=latency, progress=False,
    )  # fmt: skip

    assert len(recalibrated_scores_hold(table, model, X1, analysis, merges, batches, x)) >= 5
