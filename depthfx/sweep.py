"""A budget sweep: plan, merge and measure one model at several latency budgets.

The tables are what costs time (a latency entry per valid block, an importance score per
extended block), and they do not depend on the budget, so they are measured once and every
budget reuses them. For each budget the DP plans, ``depthfx.compile`` merges (exactly, verified)
and the merged model is timed interleaved with the original on the same backend
(:func:`depthfx.benchmark.compare`), so each row sets the table's prediction next to a
measurement that a drifting shared CPU cannot bias. A budget the tables cannot meet becomes a
row marked infeasible (with the smallest feasible budget) and the sweep goes on.

With labelled evaluation data the top-1 of the original and of each merged model is measured
*without fine-tuning*: it shows what the activations removed cost before any training, not the
accuracy a fine-tuned model reaches (use the staged API for that).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from depthfx.errors import DepthFXError, InfeasibleBudget
from depthfx.measure.layermerge_plan import METHODS, variant_tables
from depthfx.solver import FASTEST, ImportanceTable, LatencyTable, LayerMergeTable

#: How accuracies in a sweep were obtained (printed and stored with them).
ACCURACY_NOTE = "top-1 without fine-tuning"
PLOT_EXTRA = 'pip install "depthfx[plot]"'


@dataclass
class SweepRow:
    """One budget. Latencies in ms; ``error`` = (predicted − measured) / measured;
    ``speedup`` = paired median original/merged ratio of the interleaved run."""

    budget: float
    budget_ms: float
    feasible: bool
    min_budget: float | None = None
    fastest: bool = False
    predicted_ms: float | None = None
    baseline_ms: float | None = None
    measured_ms: float | None = None
    measured_iqr_ms: float | None = None
    speedup: float | None = None
    speedup_iqr: float | None = None
    error: float | None = None
    convs_after: int | None = None
    pruned: int | None = None
    activations_after: int | None = None
    max_abs_error: float | None = None
    accuracy: float | None = None
    onnx: str | None = None
    plan: dict[str, Any] | None = None


@dataclass
class SweepResult:
    """Every budget's row, plus what they share: the original's numbers and table timings."""

    input_shape: tuple[int, ...]
    backend: str
    setting: str
    table_ms: float
    convs_before: int
    activations_before: int
    latency_s: float | None
    importance_s: float | None
    rows: list[SweepRow]
    baseline_accuracy: float | None = None
    model: str | None = None
    method: str = "icml23"
    variants_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def accuracy_measured(self) -> bool:
        return self.baseline_accuracy is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "method": self.method,
            "input_shape": list(self.input_shape),
            "backend": self.backend,
            "setting": self.setting,
            "table_ms": self.table_ms,
            "convs_before": self.convs_before,
            "activations_before": self.activations_before,
            "latency_table_s": self.latency_s,
            "importance_table_s": self.importance_s,
            "variant_tables_s": self.variants_s,
            "baseline_accuracy": self.baseline_accuracy,
            "accuracy_note": ACCURACY_NOTE if self.accuracy_measured else None,
            "rows": [asdict(r) for r in self.rows],
            **self.extra,
        }

    def format(self) -> str:
        """The table ``depthfx bench --sweep`` prints."""
        acc = self.accuracy_measured
        head = ["budget", "budget ms", "predicted", "measured", "error", "speed-up", "convs"]
        pruning = self.method != "icml23"
        if pruning:
            head.append("pruned")
        rows = [[*head, "top-1 %"]] if acc else [head]
        if acc:
            rows.append(
                [
                    "original", *[""] * 5, str(self.convs_before), *[""] * pruning,
                    f"{self.baseline_accuracy:.2f}",
                ]
            )  # fmt: skip
        notes = []
        for r in self.rows:
            label = f"fastest ({r.budget:.3g})" if r.fastest else f"{r.budget:g}"
            cells = [label, f"{r.budget_ms:.3f}"]
            if not r.feasible:
                rows.append([*cells, "infeasible", *[""] * (len(rows[0]) - 3)])
                notes.append(
                    f"budget {r.budget:g} is infeasible: the smallest feasible budget is "
                    f"{r.min_budget!r}"
                )
                continue
            cells += [
                f"{r.predicted_ms:.3f}",
                f"{r.measured_ms:.3f} ± {r.measured_iqr_ms:.3f}",
                f"{100 * r.error:+.1f}%",
                f"{r.speedup:.2f}×",
                f"{self.convs_before}→{r.convs_after}",
                *[str(r.pruned)] * pruning,
            ]
            rows.append([*cells, f"{r.accuracy:.2f}"] if acc else cells)
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        shape = "×".join(str(d) for d in self.input_shape)
        lines = [
            f"sweep of {self.model or 'the model'} ({shape}, {self.backend}, method "
            f"{self.method}): original "
            f"{self.table_ms:.3f} ms in the latency table; times in ms, measured = median ± IQR "
            "timed interleaved with the original"
        ]
        lines += [
            "  " + "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows
        ]
        lines += [f"  {note}" for note in notes]
        if acc:
            lines.append(f"  top-1: {ACCURACY_NOTE} (fine-tune with the staged API to recover it)")
        timed = [("latency table", self.latency_s), ("importance table", self.importance_s)]
        if pruning:
            timed.append(("variant tables", self.variants_s))
        built = [
            f"{name} {'given' if s is None else f'measured in {s:.1f} s'}" for name, s in timed
        ]
        if self.method == "layermerge":  # its DP scores the variants only
            built[1] = "importance table not used (layermerge)"
        lines.append(f"  {'; '.join(built)}; setting: {self.setting}")
        return "\n".join(line.rstrip() for line in lines)


def sweep(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    budgets: Sequence[float | str],
    *,
    latency: LatencyTable | None = None,
    importance: ImportanceTable | None = None,
    data: Any = None,
    backend: str = "onnxruntime",
    device: str = "cpu",
    threads: int | None = 1,
    eval_data: Any = None,
    strided: str = "general",
    exclude: Sequence[str] = (),
    latency_options: dict[str, Any] | None = None,
    importance_options: dict[str, Any] | None = None,
    rounds: int = 20,
    onnx_dir: str | Path | None = None,
    force: bool = False,
    progress: bool | None = None,
    on_row: Callable[[SweepResult], None] | None = None,
    method: str = "icml23",
    variants: Mapping[int, LayerMergeTable] | None = None,
) -> SweepResult:
    """Plan, merge and time ``model`` at each budget (fractions of its measured latency, or
    ``"fastest"``: the fastest configuration, its row's budget the fraction it needs).

    Tables not given are measured once (``LatencyTable.measure`` on ``backend`` with
    ``latency_options``, e.g. ``cache_dir``; ``ImportanceTable.measure`` with the proxy on
    ``data`` and ``importance_options``). A given latency table must have been measured under
    the setting of this run (``FingerprintMismatch`` otherwise, unless ``force``).
    ``eval_data`` (a labelled Dataset or (inputs, labels) pair) adds the top-1 of the original
    and of each merged model, without fine-tuning. ``onnx_dir``: also export each merged
    model there (``budget_<b>.onnx``, checked against torch by :func:`depthfx.export_onnx`).
    ``on_row``: called with the result so far after every budget (e.g. to save it, so an
    interrupted sweep keeps the rows it finished). ``method``: as in :func:`depthfx.plan`
    (``"layermerge"`` and ``"combined"`` also measure each chain's LayerMerge variant tables
    once, unless ``variants`` gives them, with the latency and importance options above).
    """
    from tqdm.auto import tqdm

    from depthfx.api import compile as compile_model
    from depthfx.api import plan as make_plan
    from depthfx.backends.base import Fingerprint
    from depthfx.benchmark import compare
    from depthfx.export import export_onnx
    from depthfx.finetune import evaluate
    from depthfx.measure.setting import check_table
    from depthfx.passes.analyze import analyze
    from depthfx.passes.convert import count_convs

    if method not in METHODS:
        raise DepthFXError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    if not budgets:
        raise DepthFXError("sweep needs at least one budget")
    if bad := [b for b in budgets if b != FASTEST and (isinstance(b, str) or not b > 0)]:
        raise DepthFXError(
            f"budgets must be positive fractions of the latency or {FASTEST!r}, got {bad}"
        )
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    inputs = tuple(example_inputs)
    model.eval()
    analysis = analyze(model, inputs, strided=strided, exclude=exclude, training=False)
    latency_s = importance_s = variants_s = None
    if latency is None:
        t0 = time.perf_counter()
        latency = LatencyTable.measure(
            model, inputs, backend=backend, device=device, threads=threads, analysis=analysis,
            **(latency_options or {}),
        )  # fmt: skip
        latency_s = time.perf_counter() - t0
    if importance is None and method != "layermerge":
        t0 = time.perf_counter()
        importance = ImportanceTable.measure(
            model, inputs, data, analysis=analysis, latency=latency, **(importance_options or {})
        )
        importance_s = time.perf_counter() - t0
    if "end_to_end_ms" not in latency.meta:
        raise DepthFXError(
            "the latency table has no end_to_end_ms: a sweep's budgets are fractions of the "
            "original's latency, so use a table measured by LatencyTable.measure"
        )
    table_ms = float(latency.meta["end_to_end_ms"])
    if method != "icml23" and variants is None:
        t0 = time.perf_counter()
        variants = variant_tables(
            model, inputs, data, analysis, backend=backend,
            latency_options={"device": device, "threads": threads, **(latency_options or {})},
            importance_options=importance_options,
        )  # fmt: skip
        variants_s = time.perf_counter() - t0
    baseline_accuracy = None
    if eval_data is not None:
        _check_labelled(eval_data)
        baseline_accuracy = evaluate(model, eval_data)[1]

    rows: list[SweepRow] = []
    setting = ""

    def result() -> SweepResult:
        return SweepResult(
            input_shape=tuple(inputs[0].shape),
            backend=backend,
            setting=setting or Fingerprint(latency.meta.get("fingerprint", {})).summary(),
            table_ms=table_ms,
            convs_before=count_convs(analysis.graph_module),
            activations_before=sum(len(c.activations) for c in analysis.chains),
            latency_s=latency_s,
            importance_s=importance_s,
            rows=list(rows),
            baseline_accuracy=baseline_accuracy,
            method=method,
            variants_s=variants_s,
        )

    options = {"latency": latency, "importance": importance, "strided": strided,
               "exclude": exclude, "method": method, "variants": variants}  # fmt: skip
    # Each budget repeats the same planning warnings (and compile's fine-tuning reminder, which
    # the sweep's output states itself): collect them and warn once per message at the end.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for budget in tqdm(
            budgets, desc="sweep", unit="budget", disable=None if progress is None else not progress
        ):
            try:
                plan = make_plan(model, inputs, budget, **options)
            except InfeasibleBudget as err:  # err.budget, err.minimum: ms
                rows.append(SweepRow(float(budget), err.budget, False, min_budget=err.fraction))
                if on_row is not None:
                    on_row(result())
                continue
            fastest = budget == FASTEST
            fraction = plan.budget_ms / table_ms if fastest else float(budget)
            merged = compile_model(model, example_inputs=inputs, plan=plan)
            report = merged.depthfx_report
            onnx = None
            if onnx_dir is not None:
                name = "budget_fastest.onnx" if fastest else f"budget_{fraction:g}.onnx"
                onnx = str(export_onnx(merged, Path(onnx_dir) / name, inputs))
            cmp = compare(model, merged, inputs, backend=backend, device=device,
                          threads=threads, rounds=rounds)  # fmt: skip
            check_table(latency, cmp.a.fingerprint, force=force)
            setting = cmp.a.fingerprint.summary()
            measured = cmp.b.median_ms
            rows.append(
                SweepRow(
                    fraction, plan.budget_ms, True,
                    fastest=fastest,
                    predicted_ms=plan.predicted_ms,
                    baseline_ms=cmp.a.median_ms,
                    measured_ms=measured,
                    measured_iqr_ms=cmp.b.iqr_ms,
                    speedup=cmp.speedup,
                    speedup_iqr=cmp.speedup_iqr,
                    error=(plan.predicted_ms - measured) / measured,
                    convs_after=report.convs_after,
                    pruned=report.extra["pruned_convs"],
                    activations_after=report.activations_after,
                    max_abs_error=report.max_abs_error,
                    accuracy=None if eval_data is None else evaluate(merged, eval_data)[1],
                    onnx=onnx,
                    plan=plan.to_json(),
                )
            )  # fmt: skip
            if on_row is not None:
                on_row(result())
    seen: set[str] = set()
    for w in caught:
        text = str(w.message)
        if text not in seen and not text.startswith("depthfx.compile merges without fine-tuning"):
            seen.add(text)
            warnings.warn(w.message, w.category, stacklevel=2)
    return result()


def _check_labelled(data: Any) -> None:
    """Top-1 needs real labels; a tensor file without labels loads with label −1."""
    labels = None
    if hasattr(data, "tensors"):  # TensorDataset
        labels = data.tensors[-1]
    elif isinstance(data, tuple | list) and len(data) == 2:
        labels = torch.as_tensor(data[1])
    if labels is not None and bool((labels < 0).any()):
        raise DepthFXError("the evaluation data has no labels (label −1): top-1 needs labels")


def require_matplotlib() -> None:
    """Fail early, before any measuring, when a plot is asked for without matplotlib."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise DepthFXError(f"the plot needs matplotlib: {PLOT_EXTRA}") from None


def plot_sweep(result: SweepResult, path: str | Path) -> Path:
    """Write the sweep's figure: latency vs budget (predicted, measured, the budget itself and
    the original) and, when accuracy was measured, top-1 vs measured speed-up."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from depthfx.io import atomic_path

    path = Path(path)
    done = [r for r in result.rows if r.feasible]
    panels = 2 if result.accuracy_measured and done else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.2), squeeze=False)
    ax = axes[0][0]
    xs = [r.budget for r in result.rows]
    ax.plot(xs, [r.budget_ms for r in result.rows], ":", color="grey", label="budget")
    ax.axhline(result.table_ms, color="black", lw=0.8, label="original (table)")
    if done:
        ax.plot([r.budget for r in done], [r.predicted_ms for r in done], "o--", label="predicted")
        ax.errorbar(
            [r.budget for r in done], [r.measured_ms for r in done],
            yerr=[r.measured_iqr_ms / 2 for r in done], fmt="s-", capsize=3, label="measured",
        )  # fmt: skip
    for r in result.rows:
        if not r.feasible:
            ax.axvline(r.budget, color="red", alpha=0.3)
            ax.annotate("infeasible", (r.budget, result.table_ms), rotation=90, va="top",
                        ha="right", color="red", fontsize=8)  # fmt: skip
    ax.set_xlabel("budget (fraction of the original's latency)")
    ax.set_ylabel("latency (ms)")
    ax.invert_xaxis()
    ax.set_title(f"{result.model or 'model'}: latency vs budget ({result.backend})")
    ax.legend(fontsize=8)
    if panels == 2:
        ax = axes[0][1]
        ax.plot([1.0], [result.baseline_accuracy], "k*", ms=10, label="original")
        ax.plot([r.speedup for r in done], [r.accuracy for r in done], "o-", label="compressed")
        for r in done:
            ax.annotate(f"{r.budget:g}", (r.speedup, r.accuracy), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)  # fmt: skip
        ax.set_xlabel("measured speed-up (×)")
        ax.set_ylabel(f"{ACCURACY_NOTE} (%)")
        ax.set_title("accuracy vs speed-up")
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120)
    plt.close(fig)
    return path


__all__ = ["ACCURACY_NOTE", "SweepResult", "SweepRow", "plot_sweep", "require_matplotlib", "sweep"]
