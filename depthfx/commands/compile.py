"""``depthfx compile MODEL --budget F|fastest [--method M] -o out.onnx``: the whole pipeline in
one command.

Measures the latency table on the backend and a proxy importance table (and, for the methods
that prune, each chain's LayerMerge variant tables), solves the DP, merges (exactly, verified),
exports ONNX (checked against torch), and measures the original and the compressed model
interleaved on the same backend, so the printed speed-up is honest.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from depthfx.commands.model_args import add_model_arguments, budget_value, load_model_and_input
from depthfx.errors import DepthFXError
from depthfx.io import write_json

#: Keys of ``--report`` (stable: scripts read them).
REPORT_KEYS = (
    "baseline_ms",
    "predicted_ms",
    "measured_ms",
    "speedup",
    "max_abs_error",
    "convs_before",
    "convs_after",
    "method",
    "pruned_convs",
)

#: ``depthfx.plan``'s methods (``depthfx.measure.layermerge_plan.METHODS``, not imported here:
#: the CLI starts without torch).
METHODS = ("icml23", "layermerge", "combined")


def add_method_argument(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--method``, shared by ``compile`` and ``bench --sweep`` (None when not given, so
    ``bench`` can tell it apart; None means icml23)."""
    p.add_argument(
        "--method",
        choices=METHODS,
        help="icml23 (default): remove activations and merge (Kim et al., ICML 2023); "
        "layermerge: also prune convs to the identity so merged kernels stop growing "
        "(LayerMerge, ICML 2024); combined: both methods' options in one DP, never worse "
        "than either on the same tables. layermerge and combined also time each chain's "
        "pruned variants",
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compile",
        help="compress a model under a latency budget and export ONNX (no fine-tuning)",
        description=(
            "Plan (latency table on the backend + proxy importance), merge exactly, export "
            "ONNX and report original vs compressed latency measured side by side. Accuracy "
            "needs fine-tuning afterwards: see the staged API (plan → prepare → finetune → "
            "convert) in the README."
        ),
    )
    add_model_arguments(p)
    budget = p.add_mutually_exclusive_group()
    budget.add_argument(
        "--budget",
        type=budget_value,
        default=0.7,
        help="latency budget as a fraction of the original's measured latency (default 0.7), "
        "or 'fastest': the fastest configuration the tables allow",
    )
    budget.add_argument("--budget-ms", type=float, help="latency budget in milliseconds")
    add_method_argument(p)
    p.add_argument("--backend", choices=("onnxruntime", "torch", "tensorrt"), default="onnxruntime")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: stable)")
    p.add_argument(
        "--data",
        help="calibration data for the importance proxy: digits, fashion-mnist[:N], an image "
        "folder, a .pt/.npz file (see `depthfx table importance -h`); without it random "
        "inputs are used, with a warning",
    )
    p.add_argument(
        "--images",
        type=int,
        help="calibration images for the proxy (default with --data: 16, each entry's BN "
        "re-estimated; 8 random inputs without --data)",
    )
    p.add_argument(
        "--cache", type=Path, help="cache folder for the latency and importance tables (resumable)"
    )
    p.add_argument("--latency", type=Path, help="reuse a latency table (JSON) instead of measuring")
    p.add_argument("--importance", type=Path, help="reuse an importance table (JSON)")
    p.add_argument("--strided", choices=("general", "paper"), default="general")
    p.add_argument("-o", "--output", type=Path, help="write the compressed model as ONNX here")
    p.add_argument("--plan-out", type=Path, help="write the plan (JSON) here")
    p.add_argument("--report", type=Path, help="write the report (JSON) here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from depthfx.api import compile as compile_model
    from depthfx.benchmark import compare
    from depthfx.export import export_onnx
    from depthfx.solver import ImportanceTable, LatencyTable

    model, example = load_model_and_input(args)
    options: dict[str, Any] = {
        "backend": args.backend,
        "method": args.method or "icml23",
        "strided": args.strided,
        "latency_options": {
            "device": args.device,
            "threads": args.threads,
            "cache_dir": args.cache,
        },
        "importance_options": {"images": args.images, "cache": args.cache},
    }
    if args.budget_ms is not None:
        options["budget_ms"] = args.budget_ms
    if args.latency is not None:
        options["latency"] = LatencyTable.read_json(args.latency)
    if args.importance is not None:
        options["importance"] = ImportanceTable.read_json(args.importance)
    if args.data is not None:
        from depthfx.data import load_dataset

        options["data"] = load_dataset(args.data, input_shape=tuple(example.shape[1:]))
    merged = compile_model(model, args.budget, (example,), **options)
    report = merged.depthfx_report
    plan = merged.depthfx_plan
    if args.output is not None:
        export_onnx(merged, args.output, (example,))
    timing = compare(
        model, merged, (example,), backend=args.backend, device=args.device, threads=args.threads
    )
    result = {
        "baseline_ms": timing.a.median_ms,
        "predicted_ms": plan.predicted_ms,
        "measured_ms": timing.b.median_ms,
        "speedup": timing.speedup,
        "max_abs_error": report.max_abs_error,
        "convs_before": report.convs_before,
        "convs_after": report.convs_after,
        "method": args.method or "icml23",
        "pruned_convs": report.extra["pruned_convs"],
        "activations_before": report.activations_before,
        "activations_after": report.activations_after,
        "budget_ms": plan.budget_ms,
        "prediction_error": (plan.predicted_ms - timing.b.median_ms) / timing.b.median_ms,
        "model": args.model,
        "input_shape": list(example.shape),
        "backend": args.backend,
        "onnx": None if args.output is None else str(args.output),
    }
    print(format_report(result))
    if args.plan_out is not None:
        plan.save(args.plan_out)
    if args.report is not None:
        write_json(args.report, result)
    return 0


def format_report(result: dict[str, Any]) -> str:
    """The human-readable summary ``depthfx compile`` prints."""
    if missing := [k for k in REPORT_KEYS if k not in result]:
        raise DepthFXError(f"report lacks {missing}")
    shape = "×".join(str(d) for d in result["input_shape"])
    rows = [
        ("", "original", "compressed"),
        ("convs", str(result["convs_before"]), str(result["convs_after"])),
        ("convs pruned", "", str(result["pruned_convs"])),
        (
            "activations in chains",
            str(result["activations_before"]),
            str(result["activations_after"]),
        ),
        ("latency, measured (ms)", f"{result['baseline_ms']:.3f}", f"{result['measured_ms']:.3f}"),
        ("latency, predicted (ms)", "", f"{result['predicted_ms']:.3f}"),
        ("budget (ms)", "", f"{result['budget_ms']:.3f}"),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [
        f"depthfx compile {result['model']} ({shape}, {result['backend']}, method "
        f"{result['method']})"
    ]
    lines += [
        f"  {a:<{widths[0]}}  {b:>{widths[1]}}  {c:>{widths[2]}}".rstrip() for a, b, c in rows
    ]
    lines += [
        f"  speed-up (measured, interleaved): {result['speedup']:.2f}×",
        f"  prediction error: {100 * result['prediction_error']:+.1f}%",
        f"  exactness: max |merged − prepared| = {result['max_abs_error']:.2e}",
    ]
    if result.get("onnx"):
        lines.append(f"  ONNX: {result['onnx']}")
    return "\n".join(lines)
