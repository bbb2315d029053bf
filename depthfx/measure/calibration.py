"""Calibrate the latency model: fit a table's prediction to real merged plans measured in context.

*In-context calibration* (``calibrate=True`` of
:func:`~depthfx.measure.latency_table.measure_latency_table`, the default with ``end_to_end``).
A block timed alone is not the same block inside the model: its input and weights sit hot in
cache, ONNX Runtime reorders its input and output between NCHW and its blocked NCHWc layout at
the graph boundary (the whole model pays that once), and thread-pool hand-offs differ. These
costs grow with the block's work, so the raw sum is off by a *factor*, not by a constant
(MobileNetV2 at batch 8: the blocks alone sum to more than the whole model, and no constant
outside part can absorb that). The table therefore measures a few real merged plans end to end,
each interleaved with the original (A B A B, so a shared CPU's drifts hit both), and fits

    calibrated: predicted(plan) = c_fixed + scale · Σ_chains Σ_{merge groups (i, j)} T(i, j)

through the original's point (so a budget fraction of the original means what it says) by least
squares over the plans' points (exact with one plan); ``scale`` must be > 0. The plans are
chosen from the raw table alone: the fastest feasible plan and plans evenly spaced between it
and the original in predicted time, keeping as many activations as they can. The fit lives in
``meta["calibration"]`` (raw entries and the raw ``fixed_ms`` stay as measured, so the paper
CSV round-trip is unaffected); :func:`~depthfx.measure.prediction.latency_model` is what
predictions and the DP use. Because scale > 0, ``c_fixed + scale·ΣT ≤ budget`` ⇔
``ΣT ≤ (budget − c_fixed)/scale``: the DP runs on the raw entries with a transformed budget and
picks the same plan for a given raw budget whatever the fit, so re-solving after the fit has
nothing to iterate on.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from depthfx.backends.base import Backend, Fingerprint, Runnable
from depthfx.backends.timing import Timing, interleaved, measure
from depthfx.errors import DepthFXError, InfeasibleBudget, TableError
from depthfx.measure.cache import TimingCache
from depthfx.measure.prediction import chain_ms
from depthfx.measure.setting import TimingProtocol, setting_fingerprint
from depthfx.passes.convert import convert
from depthfx.passes.prepare import prepare
from depthfx.plans import Plan, solution_chains
from depthfx.records import Analysis
from depthfx.solver import ImportanceTable, LatencyTable, solve, units_per_ms


def fit_calibration(
    original: tuple[float, float], points: Sequence[tuple[float, float]]
) -> tuple[float, float]:
    """(fixed_ms, scale) of ``measured = fixed_ms + scale · chain_ms`` through the original's
    point ``(chain_ms, measured_ms)``, least squares over ``points`` (exact for one point).

    Raises :class:`~depthfx.errors.TableError` when the fit is degenerate: no point differs
    from the original in chain time (nothing to fit a slope on), or the slope is not > 0
    (measured latency does not fall with predicted latency: timings too noisy to trust).
    """
    x0, y0 = original
    if not points:
        raise TableError("calibration: no plan was measured besides the original")
    dx = [x - x0 for x, _ in points]
    dy = [y - y0 for _, y in points]
    sxx = sum(d * d for d in dx)
    if sxx <= (1e-9 * max(abs(x0), 1e-12)) ** 2:
        raise TableError(
            "calibration: every calibration plan has the original's table time "
            f"({x0:.6g}); no slope can be fitted (nothing in the chains can be merged?)"
        )
    scale = sum(a * b for a, b in zip(dx, dy, strict=True)) / sxx
    if not (math.isfinite(scale) and scale > 0):
        shown = ", ".join(f"({x:.4g}, {y:.4g})" for x, y in points)
        raise TableError(
            f"calibration: fitted scale {scale:.4g} is not > 0: the plans' measured latencies "
            f"do not fall with their table times (original ({x0:.4g}, {y0:.4g}) ms, plans "
            f"{shown}); the timings are too noisy (a busy machine?)"
        )
    return y0 - scale * x0, scale


def activation_importance(analysis: Analysis) -> ImportanceTable:
    """A latency-only importance: −(original activations an extended block removes), so the
    DP keeps as many activations as the budget allows (calibration plans, benchmarks)."""
    entries = {}
    for chain in analysis.chains:
        acts = chain.default_acts
        for st, end, st_act, end_act in chain.extended_blocks():
            removed = sum(1 for p in range(st + 1, end) if p in acts)
            removed += int(end in acts and not end_act)
            entries[chain.index, st, end, st_act, end_act] = -float(removed)
    return ImportanceTable.from_entries(entries, norm="none")


def calibration_plans_for(analysis: Analysis, table: LatencyTable, n: int) -> list[Plan]:
    """``n`` plans spanning the table's range: the fastest feasible plan, then plans at chain
    budgets evenly spaced between it and the original's, each keeping as many activations as
    the budget allows (:func:`activation_importance`). Duplicates are dropped."""
    if n < 1:
        raise DepthFXError(f"calibration_plans must be >= 1, got {n}")
    imp = activation_importance(analysis)
    original = _original_chain_ms(table)
    prec = units_per_ms(original)
    try:  # DP2 reports the smallest feasible chain budget when a zero budget does not fit
        fastest = solve(table, imp, 0.0, prec=prec).time
    except InfeasibleBudget as err:
        fastest = err.minimum
    plans: list[Plan] = []
    for k in range(n):
        solution = solve(table, imp, fastest + k / n * (original - fastest), prec=prec, warn=False)
        plan = Plan.for_analysis(analysis, solution_chains(analysis, solution))
        if plan not in plans:
            plans.append(plan)
    return plans


def _original_chain_ms(table: LatencyTable) -> float:
    """Σ T(p − 1, p) over every chain: the unmerged chains' time in table units."""
    return sum(
        table.times[c, p - 1, p]
        for c, length in table.lengths.items()
        for p in range(1, length + 1)
    )


def _architecture_key(model: nn.Module, inputs: Sequence[torch.Tensor]) -> str:
    """What identifies a model's end-to-end timing under one setting: its parameter and buffer
    shapes (by name) and the input shapes."""
    shapes = [(name, list(t.shape)) for name, t in model.state_dict().items()]
    return json.dumps({"state": shapes, "inputs": [list(x.shape) for x in inputs]})


def run_calibration(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    table: LatencyTable,
    plans: Sequence[Plan],
    backend: Backend,
    original: Runnable,
    protocol: TimingProtocol,
    cache: TimingCache | None,
    table_fp: Fingerprint,
    force: bool,
) -> tuple[Timing, dict[str, Any]]:
    """Measure each plan interleaved with the original and fit; returns the original's timing
    (its blocks over all runs) and the fit's description for ``meta["calibration"]``.

    Each plan's point is in the original's time base: ``anchor / r`` with ``r`` the median of
    the paired original/plan block ratios of its run, ``anchor`` the median of the original's
    blocks over all runs; paired ratios survive a CPU that drifts between runs. A degenerate
    fit is recorded (``status``: "failed", with the reason) and warned about; predictions then
    use the raw model. Each run is cached (resumable, and a rebuilt table gets the same fit)."""
    t_start = time.perf_counter()
    arch = hashlib.sha256(_architecture_key(model, inputs).encode()).hexdigest()[:24]
    base: list[Timing] = []
    runs: list[dict[str, Any]] = []
    skipped: list[str] = []
    for plan in plans:
        key = json.dumps(
            {
                "calibration": arch,
                "plan": [[list(c.act_pos), list(c.merge_pos)] for c in plan.chains],
            }
        )
        keys = (key + "#original", key + "#plan")
        hits = [cache.get(k) for k in keys] if cache is not None else [None, None]
        if hits[0] is not None and hits[1] is not None:
            a, b = hits[0][0], hits[1][0]
        else:
            try:
                a, b = measure_plan_in_context(
                    model, inputs, plan, backend, original, protocol, table_fp, force
                )
            except DepthFXError as err:  # e.g. a merged kernel over max_kernel_bytes
                skipped.append(str(err))
                continue
            if cache is not None:
                cache.put(keys[1], b)
                cache.put(keys[0], a)
        ratios = [x / y for x, y in zip(a.samples_ms, b.samples_ms, strict=True)]
        base.append(a)
        runs.append(
            {
                "chain_ms": chain_ms(table, plan),
                "ratio": statistics.median(ratios),
                "original_ms": a.median_ms,
                "plan_ms": b.median_ms,
                "plan_iqr_ms": b.iqr_ms,
                "plan": [
                    {"act_pos": list(c.act_pos), "merge_pos": list(c.merge_pos)}
                    for c in plan.chains
                ],
            }
        )
    if not base:
        reason = f"no calibration plan could be merged ({'; '.join(skipped)})"
        warnings.warn(
            f"{reason}; predictions use the raw additive model", RuntimeWarning, stacklevel=3
        )
        timing = measure(original, warmup_s=max(0.2, protocol.warmup_s), blocks=2 * protocol.blocks)
        return timing, {"status": "failed", "reason": reason, "skipped": skipped}
    pooled = Timing.from_samples(
        [x for t in base for x in t.samples_ms],
        base[0].n_per_block,
        sum(t.warmup_s for t in base),
        sum(t.warmup_calls for t in base),
    )
    anchor = pooled.median_ms
    for run in runs:
        run["measured_ms"] = anchor / run["ratio"]
    x0 = _original_chain_ms(table)
    doc: dict[str, Any] = {
        "model": "measured = fixed_ms + scale * chain_ms, through (original_chain_ms, "
        "end_to_end_ms)",
        "original_chain_ms": x0,
        "points": runs,
        "rounds": protocol.calibration_rounds,
        "skipped": skipped,
        "seconds": time.perf_counter() - t_start,
    }
    try:
        fixed, scale = fit_calibration(
            (x0, anchor), [(r["chain_ms"], r["measured_ms"]) for r in runs]
        )
    except TableError as err:
        warnings.warn(
            f"{err}; predictions use the raw additive model", RuntimeWarning, stacklevel=3
        )
        return pooled, {**doc, "status": "failed", "reason": str(err)}
    residuals = [r["measured_ms"] - (fixed + scale * r["chain_ms"]) for r in runs]
    return pooled, {
        **doc,
        "status": "fitted",
        "fixed_ms": fixed,
        "scale": scale,
        "residuals_ms": residuals,
    }


def measure_plan_in_context(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    plan: Plan,
    backend: Backend,
    original: Runnable,
    protocol: TimingProtocol,
    table_fp: Fingerprint,
    force: bool,
) -> tuple[Timing, Timing]:
    """(original, merged plan) timed A B A B: ``plan`` merged exactly as a user would get it
    (prepare → convert, verified) and prepared by the table's backend at its setting."""
    merged = convert(prepare(model, plan, inputs), plan, inputs)
    runnable = backend.prepare(merged, inputs)
    setting_fingerprint(runnable.fingerprint).check_compatible(table_fp, force=force)
    res = interleaved(
        original, runnable, rounds=protocol.calibration_rounds, warmup_s=max(0.2, protocol.warmup_s)
    )
    return res.a, res.b


def describe_calibration(table: LatencyTable) -> str:
    """One line on the table's latency model, for CLI output and reports."""
    cal = table.meta.get("calibration")
    if not isinstance(cal, Mapping):
        return "raw additive model (no in-context calibration)"
    if cal.get("status") != "fitted":
        return f"raw additive model (calibration failed: {cal.get('reason')})"
    pts = ", ".join(f"{p['chain_ms']:.3f}→{p['measured_ms']:.3f}" for p in cal.get("points", ()))
    return (
        f"{cal['fixed_ms']:.4g} ms + {cal['scale']:.4f} × Σ T  (original "
        f"{cal['original_chain_ms']:.3f}→{table.meta['end_to_end_ms']:.3f} ms; plans {pts} ms)"
    )
