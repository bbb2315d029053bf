"""``depthfx bench``: median/IQR latency of one model on one backend, with its fingerprint; with
``--sweep``, plan, merge and time the model at several budgets (:mod:`depthfx.sweep`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from depthfx.commands.compile import add_method_argument
from depthfx.commands.model_args import budget_value, parse_shape
from depthfx.errors import DepthFXError
from depthfx.io import write_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="measure a model's latency; --sweep: compress at several budgets and compare",
        description=(
            "Time MODEL (an .onnx file or a spec such as torchvision:resnet18) on one backend. "
            "Reports the median per-call latency over blocks and the IQR; use --threads 1 "
            "for numbers that are stable on a shared CPU. With --sweep 0.9,0.8,0.7: measure "
            "the latency and importance tables once, then for each budget plan, merge and time "
            "the compressed model interleaved with the original (predicted vs measured, "
            "speed-up; top-1 without fine-tuning with --eval-data; a figure with --plot)."
        ),
    )
    p.add_argument(
        "model",
        metavar="MODEL_OR_ONNX",
        help="an .onnx path, or torchvision:NAME, timm:NAME, path/to/file.py:factory",
    )
    p.add_argument("--weights", help="local state_dict file to load (nothing is downloaded)")
    p.add_argument("--backend", choices=("onnxruntime", "torch", "tensorrt"), default="onnxruntime")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: 1)")
    p.add_argument(
        "--input-shape",
        default=None,
        help="N,C,H,W of the input (default 1,3,224,224 for specs; the graph's for .onnx)",
    )
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: stable)")
    p.add_argument("--warmup", type=float, default=0.2, help="warm-up seconds (default 0.2)")
    p.add_argument("--blocks", type=int, default=20, help="timed blocks (default 20)")
    p.add_argument("--json", type=Path, default=None, help="also write the result as JSON")
    sweep = p.add_argument_group("budget sweep (a model spec, not an .onnx file)")
    sweep.add_argument(
        "--sweep",
        type=_budgets,
        metavar="B1,B2,…",
        help="budgets as fractions of the original's latency, e.g. 0.9,0.8,0.7,0.6; 'fastest' "
        "adds the fastest configuration the tables allow",
    )
    add_method_argument(sweep)
    sweep.add_argument("--latency", type=Path, help="reuse a latency table (JSON)")
    sweep.add_argument("--importance", type=Path, help="reuse an importance table (JSON)")
    sweep.add_argument(
        "--data",
        help="calibration data for the importance proxy (digits, fashion-mnist[:N], an image "
        "folder, a .pt/.npz file); without it random inputs are used, with a warning",
    )
    sweep.add_argument("--images", type=int, help="calibration images for the proxy (default 256)")
    sweep.add_argument(
        "--cache", type=Path, help="cache folder for the latency and importance tables (resumable)"
    )
    sweep.add_argument("--strided", choices=("general", "paper"), default="general")
    sweep.add_argument(
        "--eval-data",
        metavar="SPEC",
        help="labelled data (same specs as --data) for the top-1 of the original and of each "
        "compressed model, without fine-tuning",
    )
    sweep.add_argument(
        "--onnx-dir", type=Path, help="also export each compressed model there (budget_B.onnx)"
    )
    sweep.add_argument(
        "--plot",
        type=Path,
        metavar="OUT.png",
        help="write a figure: latency vs budget, accuracy vs speed-up (needs matplotlib: "
        'pip install "depthfx[plot]")',
    )
    p.set_defaults(func=run)


def _budgets(text: str) -> list[float | str]:
    try:
        values = [budget_value(v) for v in text.split(",") if v.strip()]
    except argparse.ArgumentTypeError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(
            f"bad budgets {text!r}: expected positive fractions like 0.9,0.8,0.7 (or fastest)"
        )
    return values


def run(args: argparse.Namespace) -> int:
    import torch

    from depthfx.benchmark import benchmark
    from depthfx.models import load_model

    if args.sweep is not None:
        return run_sweep(args)
    sweep_only = (
        "method", "latency", "importance", "data", "images", "cache", "eval_data", "onnx_dir",
        "plot",
    )  # fmt: skip
    if given := [f"--{k.replace('_', '-')}" for k in sweep_only if getattr(args, k) is not None]:
        raise DepthFXError(f"{', '.join(given)} only apply with --sweep")
    shape = parse_shape(args.input_shape, args.batch) if args.input_shape else None
    backend_options: dict[str, Any] = {}
    if args.model.endswith(".onnx"):
        if not Path(args.model).is_file():
            raise DepthFXError(f"ONNX file not found: {args.model}")
        model: Any = args.model
        example = (torch.randn(shape),) if shape else None
        if example is None and args.backend in ("onnxruntime", "tensorrt"):
            backend_options["batch"] = args.batch or 1
        if args.backend == "torch":
            raise DepthFXError("the torch backend needs a PyTorch model, not an .onnx file")
    else:
        model = load_model(args.model, args.weights).eval()
        example = (torch.randn(parse_shape(args.input_shape, args.batch)),)
    result = benchmark(
        model,
        example,
        backend=args.backend,
        device=args.device,
        threads=args.threads,
        warmup_s=args.warmup,
        blocks=args.blocks,
        backend_options=backend_options,
    )
    t = result.timing
    rows = [
        ("model", args.model),
        ("median", f"{t.median_ms:.4f} ms"),
        ("IQR", f"{t.iqr_ms:.4f} ms ({100 * t.spread:.1f}% of median)"),
        ("blocks", f"{len(t.samples_ms)} × {t.n_per_block} calls"),
        ("warm-up", f"{t.warmup_s:.2f} s, {t.warmup_calls} calls"),
        ("setting", result.fingerprint.summary()),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    if args.json is not None:
        write_json(args.json, {"model": args.model, **result.to_dict()})
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    """``--sweep``: tables once, then plan → merge → interleaved timing per budget."""
    import torch

    from depthfx.data import load_dataset
    from depthfx.models import load_model
    from depthfx.solver import ImportanceTable, LatencyTable
    from depthfx.sweep import SweepResult, plot_sweep, require_matplotlib, sweep

    if args.model.endswith(".onnx"):
        raise DepthFXError("--sweep needs a PyTorch model spec (e.g. torchvision:NAME), not ONNX")
    if args.plot is not None:
        require_matplotlib()  # before minutes of measuring, not after
    model = load_model(args.model, args.weights).eval()
    shape = parse_shape(args.input_shape, args.batch)
    example = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    image_shape = tuple(shape[1:])

    def save(partial: SweepResult) -> None:  # after every budget: an interruption keeps them
        if args.json is not None:
            partial.model = args.model
            write_json(args.json, partial.to_dict())

    result = sweep(
        model,
        (example,),
        args.sweep,
        latency=None if args.latency is None else LatencyTable.read_json(args.latency),
        importance=None if args.importance is None else ImportanceTable.read_json(args.importance),
        data=None if args.data is None else load_dataset(args.data, input_shape=image_shape),
        backend=args.backend,
        device=args.device,
        threads=args.threads,
        eval_data=(
            None
            if args.eval_data is None
            else load_dataset(args.eval_data, input_shape=image_shape)
        ),
        strided=args.strided,
        latency_options={"cache_dir": args.cache},
        importance_options={"images": args.images, "cache": args.cache},
        rounds=args.blocks,
        onnx_dir=args.onnx_dir,
        on_row=save,
        method=args.method or "icml23",
    )
    result.model = args.model
    print(result.format())
    if args.json is not None:
        write_json(args.json, result.to_dict())
    if args.plot is not None:
        plot_sweep(result, args.plot)
        print(f"  plot: {args.plot}")
    return 0
