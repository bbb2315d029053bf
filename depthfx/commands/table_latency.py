"""``depthfx table latency MODEL``: measure a latency table on a real backend."""

from __future__ import annotations

import argparse
from pathlib import Path

from depthfx.commands.model_args import parse_shape
from depthfx.errors import DepthFXError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "latency",
        help="time the merged conv of every valid block, plus the whole model",
        description=(
            "Time every valid block of every chain of MODEL, merged into one conv with the "
            "activation that follows it, at its true input shape, on one backend; also the "
            "end-to-end latency of MODEL optimised by the same backend. Identical block shapes "
            "are timed once; --cache makes the build resumable."
        ),
    )
    p.add_argument("model", metavar="MODEL", help="torchvision:NAME, timm:NAME or file.py:factory")
    p.add_argument("--backend", choices=("onnxruntime", "torch", "tensorrt"), default="onnxruntime")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument(
        "--input-shape", default="1,3,224,224", help="N,C,H,W (default 1,3,224,224; N: --batch)"
    )
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: stable)")
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32", help="TensorRT only")
    p.add_argument("--strided", choices=("general", "paper"), default="general")
    p.add_argument("--exclude", action="append", default=[], help="conv kept out of chains")
    p.add_argument("--cache", type=Path, default=None, metavar="DIR", help="resumable cache")
    p.add_argument("--jobs", type=int, default=1, help="build models/engines ahead in N threads")
    p.add_argument("--no-bound", action="store_true", help="time even dominated huge blocks")
    p.add_argument(
        "--no-calibration",
        action="store_true",
        help="skip the in-context calibration (timing real merged plans against the original)",
    )
    p.add_argument("--force", action="store_true", help="accept mismatching fingerprints")
    p.add_argument(
        "--executor",
        choices=("serial", "ray"),
        default="serial",
        help="ray: measure the whole table as one Ray task on the node holding --resource "
        "(nothing else runs there meanwhile); serial: here",
    )
    p.add_argument(
        "--address", default=None, help="ray: the cluster's address ('auto': this machine's)"
    )
    p.add_argument(
        "--resource",
        action="append",
        default=[],
        metavar="LABEL[=N]",
        help="ray: a custom resource of the node to measure on (repeatable), as given to "
        "`ray start --resources`",
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="table .json (with meta)")
    p.add_argument("--csv", type=Path, default=None, help="also write the paper's CSV format")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from depthfx.measure.calibration import describe_calibration
    from depthfx.measure.latency_table import load_table, measure_latency_table
    from depthfx.models import load_model

    if args.output.suffix != ".json":
        raise DepthFXError(f"-o must be a .json file (it keeps the fingerprint): {args.output}")
    model = load_model(args.model)
    example = (torch.randn(parse_shape(args.input_shape, args.batch)),)
    options = {"precision": args.precision} if args.backend == "tensorrt" else {}
    # Never overwrite a table of another setting by accident: checked before timing anything.
    previous = load_table(args.output).meta.get("fingerprint") if args.output.exists() else None
    executor_options = remote_options(args)
    table = measure_latency_table(
        model,
        example,
        backend=args.backend,
        device=args.device,
        threads=args.threads,
        strided=args.strided,
        exclude=tuple(args.exclude),
        cache_dir=args.cache,
        jobs=args.jobs,
        bound=not args.no_bound,
        calibrate=not args.no_calibration,
        backend_options=options,
        force=args.force,
        expect=previous,
        executor=args.executor,
        executor_options=executor_options,
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    table.write_json(args.output)
    if args.csv is not None:
        table.write_csv(args.csv)
    m = table.meta
    rows = [
        ("model", args.model),
        ("blocks", f"{len(table.times)} valid blocks, {m['unique_shapes']} distinct shapes"),
        (
            "timed",
            f"{m['timed_now']} now, {m['from_cache']} from cache, {len(m['bounded'])} bounded",
        ),
        ("end-to-end", f"{m['end_to_end_ms']:.4f} ms (IQR {m['end_to_end_iqr_ms']:.4f})"),
        ("fixed part", f"{m['fixed_ms']:.4f} ms outside the chains (raw)"),
        ("latency model", describe_calibration(table)),
        ("build time", f"{m['build_s']:.1f} s"),
        *([("node", _node(m["node"]))] if "node" in m else []),
        ("setting", _summary(m["fingerprint"])),
        ("written", str(args.output) + (f", {args.csv}" if args.csv else "")),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def remote_options(args: argparse.Namespace) -> dict[str, object] | None:
    """``executor_options`` of ``--executor ray`` (its node's resources, the cluster address);
    None for serial. The flags of one executor given with the other are an error."""
    if args.executor == "serial":
        if args.address is not None or args.resource:
            raise DepthFXError("--address and --resource only apply with --executor ray")
        return None
    if not args.resource:
        raise DepthFXError(
            "--executor ray measures on one node: name it with --resource LABEL (a custom "
            "resource of that node, `ray start --resources='{\"LABEL\": 1}'`)"
        )
    resources: dict[str, float] = {}
    for text in args.resource:
        label, _, amount = text.partition("=")
        try:
            resources[label] = float(amount) if amount else 1.0
        except ValueError:
            raise DepthFXError(f"bad --resource {text!r}: expected LABEL or LABEL=N") from None
        if not label or resources[label] <= 0:
            raise DepthFXError(f"bad --resource {text!r}: expected LABEL or LABEL=N, N > 0")
    options: dict[str, object] = {"resources": resources}
    if args.address is not None:
        options["address"] = args.address
    return options


def _node(node: dict[str, object]) -> str:
    return f"{node.get('hostname', '?')} ({node.get('ip', '?')}), Ray node {node.get('node_id')}"


def _summary(fp: dict[str, object]) -> str:
    from depthfx.backends.base import Fingerprint

    return Fingerprint(fp).summary()
