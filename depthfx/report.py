"""Predicted vs measured latency of a plan, and its speed-up, measured in one run.

The DP optimises a *prediction*: fixed_ms + Σ T(i, j) over the plan's merge groups, from
blocks timed in isolation (spec §7 pitfall 15: additivity ignores cross-layer fusion, memory
traffic and launch overhead). This report checks it: the merged model and the unmerged
original, both exported and optimised by the same backend at the same settings, are timed
interleaved (A B A B, :func:`depthfx.benchmark.compare`), and the prediction is printed next
to the measurement with its relative error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from depthfx.benchmark import compare
from depthfx.measure.prediction import predict_ms
from depthfx.measure.setting import check_table
from depthfx.plans import Plan
from depthfx.solver import LatencyTable


@dataclass(frozen=True)
class LatencyReport:
    """Latencies in ms; ``error`` = (predicted − measured) / measured; ``speedup`` = the
    paired median baseline/merged ratio of the interleaved run (> 1: merged is faster)."""

    baseline_ms: float
    baseline_iqr_ms: float
    predicted_ms: float
    measured_ms: float
    measured_iqr_ms: float
    error: float
    speedup: float
    speedup_iqr: float
    predicted_baseline_ms: float
    table_end_to_end_ms: float | None
    budget_ms: float | None
    setting: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        rows = [
            ("", "predicted", "measured", "error"),
            (
                "original",
                f"{self.predicted_baseline_ms:.3f} ms",
                f"{self.baseline_ms:.3f} ± {self.baseline_iqr_ms:.3f} ms",
                f"{100 * (self.predicted_baseline_ms / self.baseline_ms - 1):+.1f}%",
            ),
            (
                "merged",
                f"{self.predicted_ms:.3f} ms",
                f"{self.measured_ms:.3f} ± {self.measured_iqr_ms:.3f} ms",
                f"{100 * self.error:+.1f}%",
            ),
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        lines.append(
            f"speed-up over the backend-optimised original: {self.speedup:.3f}× "
            f"(IQR {self.speedup_iqr:.3f}, interleaved)"
        )
        if self.budget_ms is not None:
            lines.append(f"budget: {self.budget_ms:.3f} ms")
        lines.append(f"setting: {self.setting}")
        return "\n".join(line.rstrip() for line in lines)


def latency_report(
    model: nn.Module,
    merged: nn.Module,
    plan: Plan,
    table: LatencyTable,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    backend: str = "onnxruntime",
    device: str = "cpu",
    threads: int | None = 1,
    rounds: int = 30,
    backend_options: Mapping[str, Any] | None = None,
    force: bool = False,
) -> LatencyReport:
    """Time ``model`` (baseline) and ``merged`` interleaved and set them next to the table's
    prediction for ``plan``. Raises ``FingerprintMismatch`` if the table was measured under
    another setting (backend, device, threads, batch, …) unless ``force``."""
    from depthfx.backends.base import Fingerprint

    inputs = (
        (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    )
    predicted = predict_ms(table, plan)
    original = Plan(chains=(), input_shapes=plan.input_shapes)
    predicted_base = predict_ms(table, original)
    cmp = compare(
        model,
        merged,
        inputs,
        backend=backend,
        device=device,
        threads=threads,
        rounds=rounds,
        backend_options=backend_options,
    )
    check_table(table, cmp.a.fingerprint, force=force)
    measured = cmp.b.median_ms
    return LatencyReport(
        baseline_ms=cmp.a.median_ms,
        baseline_iqr_ms=cmp.a.iqr_ms,
        predicted_ms=predicted,
        measured_ms=measured,
        measured_iqr_ms=cmp.b.iqr_ms,
        error=(predicted - measured) / measured,
        speedup=cmp.speedup,
        speedup_iqr=cmp.speedup_iqr,
        predicted_baseline_ms=predicted_base,
        table_end_to_end_ms=table.meta.get("end_to_end_ms"),
        budget_ms=plan.budget_ms,
        setting=Fingerprint(cmp.a.fingerprint).summary(),
    )
