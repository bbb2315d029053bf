"""In-context calibration of a latency table: the fit, its use by predictions and the DP, its
persistence, the opt-out and the degenerate cases.

Plan timings are injected (``calibration.measure_plan_in_context``) from a known line
``measured = FIXED + SCALE · Σ T`` over the table's own entries, so the expected fit is known
by construction; the block entries themselves are real (ONNX Runtime, fast protocol) and come
from a cache shared by every table of a test, so all of them hold the same entries.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from latency_helpers import FAST
from torch import nn

from depthfx.api import plan as make_plan
from depthfx.backends.timing import Timing
from depthfx.errors import InfeasibleBudget, TableError
from depthfx.measure import calibration
from depthfx.measure.calibration import (
    activation_importance,
    calibration_plans_for,
    describe_calibration,
    fit_calibration,
)
from depthfx.measure.latency_table import load_table, measure_latency_table
from depthfx.measure.prediction import chain_ms, latency_model, predict_ms
from depthfx.passes.analyze import analyze
from depthfx.plans import Plan
from depthfx.solver import LatencyTable
from depthfx.testing import random_plan

FIXED, SCALE = 0.25, 0.6


def _timing(samples: list[float]) -> Timing:
    return Timing.from_samples(samples, 1, 0.0, 0)


@pytest.fixture(scope="module", autouse=True)
def export_once() -> Iterator[None]:
    """Every table here exports the same original model: export it once (the dynamo
    exporter takes seconds), so each test pays only for what it checks."""
    import depthfx.export

    real = depthfx.export.to_onnx_model
    done: dict[int, Any] = {}

    def memo(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        if id(model) not in done:
            done[id(model)] = real(model, *args, **kwargs)
        return done[id(model)]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(depthfx.export, "to_onnx_model", memo)
        yield


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("latency-cache")


@pytest.fixture(scope="module")
def raw(net: nn.Module, x: torch.Tensor, cache: Path) -> LatencyTable:
    """The table without calibration; its entries fill the shared cache."""
    return measure_latency_table(net, (x,), protocol=FAST, cache_dir=cache, calibrate=False)


def _fake_runs(
    raw: LatencyTable,
    line: Callable[[float], float],
    drift: Callable[[int], list[float]] = lambda run: [1.0] * 5,
) -> tuple[Callable[..., tuple[Timing, Timing]], list[Plan]]:
    """A stand-in for ``measure_plan_in_context``: the original and the plan at ``line(Σ T)``, both
    multiplied per round by the run's ``drift`` (a CPU changing speed, which hits A and B of
    a round alike)."""
    x0 = chain_ms(raw, Plan(chains=()))
    seen: list[Plan] = []

    def fake(model, inputs, plan, *args, **kwargs) -> tuple[Timing, Timing]:
        d = drift(len(seen))
        seen.append(plan)
        y = line(chain_ms(raw, plan))
        return _timing([line(x0) * k for k in d]), _timing([y * k for k in d])

    return fake, seen


def _calibrated(
    net: nn.Module,
    x: torch.Tensor,
    cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    fake: Callable[..., tuple[Timing, Timing]],
    **opts: object,
) -> LatencyTable:
    """A table built from the cached block entries, with ``fake`` plan timings. Each test
    calibrates in its own copy of the cache (calibration runs are cached too)."""
    monkeypatch.setattr(calibration, "measure_plan_in_context", fake)
    return measure_latency_table(net, (x,), protocol=FAST, cache_dir=cache, **opts)


@pytest.fixture
def own(cache: Path, raw: LatencyTable, tmp_path: Path) -> Path:
    """This test's copy of the shared cache (block entries only)."""
    return Path(shutil.copytree(cache, tmp_path / "cache"))


def test_fit_is_exact_on_a_line_and_least_squares_through_the_original() -> None:
    x0, y0 = 10.0, 7.0  # the original, on y = 2 + 0.5 x
    assert fit_calibration((x0, y0), [(4.0, 4.0)]) == pytest.approx((2.0, 0.5))
    assert fit_calibration((x0, y0), [(4.0, 4.0), (6.0, 5.0)]) == pytest.approx((2.0, 0.5))
    # Off-line points: the slope through (x0, y0) minimises Σ (dy − s·dx)²:
    # dx = (−6, −4), dy = (−3.5, −1.5) → s = (21 + 6) / (36 + 16).
    fixed, scale = fit_calibration((x0, y0), [(4.0, 3.5), (6.0, 5.5)])
    assert scale == pytest.approx(27 / 52)
    assert fixed + scale * x0 == pytest.approx(y0)  # the original stays exact


@pytest.mark.parametrize(
    ("points", "message"),
    [
        ([], "no plan"),
        ([(10.0, 5.0), (10.0, 6.0)], "no slope"),
        ([(4.0, 9.0)], "not > 0"),  # predicted faster, measured slower than the original
    ],
)
def test_degenerate_fit_raises_a_clear_error(
    points: list[tuple[float, float]], message: str
) -> None:
    with pytest.raises(TableError, match=message):
        fit_calibration((10.0, 7.0), points)


def test_measure_recovers_the_line_and_predictions_use_it(
    net: nn.Module,
    x: torch.Tensor,
    own: Path,
    raw: LatencyTable,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake, seen = _fake_runs(raw, lambda t: FIXED + SCALE * t)
    table = _calibrated(net, x, own, monkeypatch, fake)
    assert table.times == raw.times  # raw entries untouched
    cal = table.meta["calibration"]
    assert cal["status"] == "fitted"
    assert cal["fixed_ms"] == pytest.approx(FIXED) and cal["scale"] == pytest.approx(SCALE)
    # Two plans, unless the measured entries make the halfway plan the fastest one too (the
    # entries are real timings): then one, and the fit through the original is exact anyway.
    assert 1 <= len(seen) == len(cal["points"]) <= 2
    assert len({json.dumps(p.to_json(), sort_keys=True) for p in seen}) == len(seen)
    # The calibration plans span the table: the first is the fastest the DP allows.
    times = sorted(chain_ms(raw, p) for p in seen)
    analysis = analyze(net, (x,))
    for seed in range(5):
        assert times[0] <= chain_ms(raw, random_plan(analysis, seed)) + 1e-12
    model = latency_model(table)
    assert model.calibrated and model.end_to_end_ms == pytest.approx(
        FIXED + SCALE * cal["original_chain_ms"]
    )
    for seed in range(3):
        plan = random_plan(analysis, seed)
        want = FIXED + SCALE * chain_ms(raw, plan)
        assert predict_ms(table, plan) == pytest.approx(want)
        assert predict_ms(raw, plan) != pytest.approx(want)
    assert predict_ms(table, Plan(chains=())) == pytest.approx(table.meta["end_to_end_ms"])
    assert "× Σ T" in describe_calibration(table)


def test_paired_ratios_cancel_drift_between_runs(
    net: nn.Module,
    x: torch.Tensor,
    own: Path,
    raw: LatencyTable,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Run 1 on a machine twice as slow as run 2: the plans' raw medians would fit a wrong
    slope, their paired ratios against the original put them on the right line."""
    fake, seen = _fake_runs(
        raw, lambda t: FIXED + SCALE * t, lambda run: [2.0] * 5 if run == 0 else [1.0] * 5
    )
    # Six budgets, so that at least two distinct plans (two runs, two speeds) are calibrated
    # whatever the real block timings: with one run there would be no drift to cancel.
    table = _calibrated(net, x, own, monkeypatch, fake, calibration_plans=6)
    assert len(seen) >= 2
    cal = table.meta["calibration"]
    # The anchor is the pooled original (some blocks at 2×, the others at 1×): every point, and
    # so the fit, is in that time base, i.e. the true line times one common factor.
    c = table.meta["end_to_end_ms"] / (FIXED + SCALE * cal["original_chain_ms"])
    assert 1.0 <= c <= 2.0
    assert cal["scale"] == pytest.approx(c * SCALE)
    assert cal["fixed_ms"] == pytest.approx(c * FIXED)
    assert cal["residuals_ms"] == pytest.approx([0.0] * len(seen), abs=1e-9)


def test_json_round_trip_keeps_the_fit_and_csv_keeps_raw_entries(
    net: nn.Module,
    x: torch.Tensor,
    own: Path,
    raw: LatencyTable,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    fake, _ = _fake_runs(raw, lambda t: FIXED + SCALE * t)
    table = _calibrated(net, x, own, monkeypatch, fake)
    table.write_json(tmp_path / "t.json")
    back = load_table(tmp_path / "t.json")
    assert back.meta["calibration"] == table.meta["calibration"]
    plan = random_plan(analyze(net, (x,)), 1)
    assert predict_ms(back, plan) == predict_ms(table, plan)
    table.write_csv(tmp_path / "t.csv")
    assert load_table(tmp_path / "t.csv").times == pytest.approx(raw.times)


def test_calibration_is_cached_with_the_table(
    net: nn.Module,
    x: torch.Tensor,
    own: Path,
    raw: LatencyTable,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake, _ = _fake_runs(raw, lambda t: 1.0 + 0.9 * t)
    first = _calibrated(net, x, own, monkeypatch, fake, calibration_plans=3)

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached calibration run was measured again")

    again = _calibrated(net, x, own, monkeypatch, never, calibration_plans=3)
    assert again.meta["calibration"]["points"] == first.meta["calibration"]["points"]
    assert again.meta["end_to_end_ms"] == first.meta["end_to_end_ms"]


def test_opt_out_keeps_the_raw_model(
    net: nn.Module, x: torch.Tensor, own: Path, raw: LatencyTable, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("calibrate=False measured a plan")

    table = _calibrated(net, x, own, monkeypatch, never, calibrate=False)
    assert "calibration" not in table.meta
    model = latency_model(table)
    plan = random_plan(analyze(net, (x,)), 2)
    fixed, total = table.meta["fixed_ms"], table.meta["end_to_end_ms"]
    assert not model.calibrated
    if fixed >= 0:  # the raw additive model
        assert model.scale == 1.0
        assert predict_ms(table, plan) == pytest.approx(fixed + chain_ms(table, plan))
    else:  # blocks alone cost more than the whole model: scaled through the original
        scaled = total / (total - fixed) * chain_ms(table, plan)
        assert predict_ms(table, plan) == pytest.approx(scaled)


def test_degenerate_measurement_falls_back_to_the_raw_model_with_a_warning(
    net: nn.Module,
    x: torch.Tensor,
    own: Path,
    raw: LatencyTable,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every plan measured slower the faster the table predicts it: slope < 0.
    fake, _ = _fake_runs(raw, lambda t: 5.0 - t)
    with pytest.warns(RuntimeWarning, match="not > 0.*raw additive model"):
        table = _calibrated(net, x, own, monkeypatch, fake, calibration_plans=3)
    cal = table.meta["calibration"]
    assert cal["status"] == "failed" and "not > 0" in cal["reason"]
    assert not latency_model(table).calibrated
    assert "calibration failed" in describe_calibration(table)
    plan = random_plan(analyze(net, (x,)), 0)
    assert predict_ms(table, plan) == pytest.approx(table.meta["fixed_ms"] + chain_ms(table, plan))


def test_plans_that_cannot_be_merged_are_skipped(
    net: nn.Module,
    x: torch.Tensor,
    own: Path,
    raw: LatencyTable,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A calibration plan refused by convert (e.g. a kernel over max_kernel_bytes) is skipped;
    with none left the table keeps the raw model and says why."""
    from depthfx.plans import PlanError

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise PlanError("merged kernel too large")

    with pytest.warns(RuntimeWarning, match="no calibration plan could be merged"):
        table = _calibrated(net, x, own, monkeypatch, refuse)
    cal = table.meta["calibration"]
    assert cal["status"] == "failed" and "merged kernel too large" in cal["reason"]
    assert not latency_model(table).calibrated
    assert table.meta["end_to_end_ms"] > 0


def test_plan_budgets_through_the_calibrated_model(
    net: nn.Module,
    x: torch.Tensor,
    own: Path,
    raw: LatencyTable,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """depthfx.plan turns the budget into table units with the fit, and predicts with it."""
    fake, _ = _fake_runs(raw, lambda t: FIXED + SCALE * t)
    table = _calibrated(net, x, own, monkeypatch, fake)
    analysis = analyze(net, (x,))
    imp = activation_importance(analysis)
    x0 = table.meta["calibration"]["original_chain_ms"]
    fastest = min(chain_ms(raw, p) for p in calibration_plans_for(analysis, raw, 1))
    for k in (0.3, 0.7):
        budget_ms = FIXED + SCALE * (fastest + k * (x0 - fastest))
        plan = make_plan(net, (x,), budget_ms=budget_ms, latency=table, importance=imp)
        t = chain_ms(table, plan)
        assert plan.predicted_ms == pytest.approx(FIXED + SCALE * t)
        # The raw model would charge the whole Σ T on top of its own outside part.
        assert plan.predicted_ms != pytest.approx(table.meta["fixed_ms"] + t)
        assert t <= (budget_ms - FIXED) / SCALE * 1.01  # DP rounding: units of 1/2000
    assert make_plan(net, (x,), 1.0, latency=table, importance=imp).budget_ms == pytest.approx(
        table.meta["end_to_end_ms"]
    )
    # Infeasible below the fastest plan, reported in ms of the calibrated model.
    with pytest.raises(InfeasibleBudget, match="calibrated") as err:
        make_plan(net, (x,), budget_ms=FIXED + SCALE * fastest / 2, latency=table, importance=imp)
    assert math.isclose(err.value.minimum, FIXED + SCALE * fastest, rel_tol=0.01)
