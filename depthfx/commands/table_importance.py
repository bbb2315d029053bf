"""``depthfx table importance``: score every extended block of a model (proxy or fine-tuning)."""

from __future__ import annotations

import argparse
from pathlib import Path

from depthfx.commands.model_args import add_model_arguments
from depthfx.errors import DepthFXError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "importance",
        help="measure the importance table (proxy, or the paper's fine-tuning protocol)",
        description=(
            "Score every extended block (chain, st, end, st_act, end_act) of MODEL. proxy: "
            "output divergence of each block's merged network on sample inputs (--data; minutes, "
            "no training). finetune: the paper's 1-epoch fine-tuning per entry (cached, "
            "resumable, shardable, parallel with --executor). Data specs: digits, "
            "fashion-mnist[:N], fashion-mnist-test, an image folder, a .pt/.npz file."
        ),
    )
    add_model_arguments(p)
    p.add_argument("--method", choices=("proxy", "finetune"), default="proxy")
    p.add_argument("--data", help="the proxy's input data (proxy) or held-out data (finetune)")
    p.add_argument("--train-data", help="fine-tuning data (finetune)")
    p.add_argument(
        "--images",
        type=int,
        default=None,
        help="images the proxy runs on (default with --data: 16 with BN re-estimated, 256 "
        "for --estimate fisher; 8 random inputs without --data)",
    )
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--score", choices=("auto", "kl", "mse", "accuracy"), default="auto")
    p.add_argument(
        "--estimate",
        choices=("fisher", "exact"),
        default=None,
        help="proxy: fisher (each entry's changed region exactly, the rest to second order; the "
        "default without --data) or exact (every entry's network to the output; needed for "
        "--score accuracy); giving it turns the BN re-estimation default off",
    )
    p.add_argument(
        "--bn-recalibration",
        choices=("on", "one-pass", "off"),
        default=None,
        help="proxy: re-estimate each entry's BN statistics on --data before scoring it (on: "
        "a statistics pass then an evaluation pass; one-pass: both in one). Default with --data "
        "and no --estimate: one-pass, with --images 16 unless given; off otherwise",
    )
    p.add_argument("--epochs", type=float, default=1.0, help="fine-tuning epochs (default 1)")
    p.add_argument("--steps", type=int, default=None, help="fine-tuning steps (overrides epochs)")
    p.add_argument("--lr", type=float, default=0.1, help="fine-tuning lr (default 0.1)")
    p.add_argument("--norm", choices=("none", "single", "default", "all"), default=None)
    p.add_argument("--alpha", type=float, default=None)
    p.add_argument("--mean", default=None, help="input normalisation mean, e.g. 0.485,0.456,0.406")
    p.add_argument("--std", default=None, help="input normalisation std")
    p.add_argument("--strided", choices=("general", "paper"), default="general")
    p.add_argument("--exclude", action="append", default=[], help="conv kept out of chains")
    p.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="resume folder: per-entry results (finetune), running sums per batch (proxy)",
    )
    p.add_argument("--shard", default=None, metavar="K/N", help="measure only shard K of N")
    p.add_argument(
        "--latency",
        type=Path,
        help="the model's latency table (JSON): score each entry with the merge groups a plan "
        "deploys (faster, more faithful) instead of the paper's S = A",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--executor",
        choices=("serial", "processes", "ray"),
        default="serial",
        help="finetune: where the entries run: here (serial), in --workers processes, or as "
        "Ray tasks (--address of a cluster, else a local one); results are cached by this "
        "process as they arrive (--cache)",
    )
    p.add_argument(
        "--workers", type=int, default=None, help="processes: worker count; ray: local CPUs"
    )
    p.add_argument(
        "--address", default=None, help="ray: the cluster's address ('auto': this machine's)"
    )
    p.add_argument(
        "--cpus-per-entry", type=int, default=None, help="CPUs (= torch threads) per entry"
    )
    p.add_argument(
        "--gpus-per-entry",
        type=float,
        default=None,
        help="ray: GPUs per entry; processes: 1 = one worker per GPU",
    )
    p.add_argument(
        "--max-retries", type=int, default=None, help="retries of an entry whose worker died"
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="table file: .json or .csv")
    p.add_argument("--ext-csv", type=Path, default=None, help="also write the I_ext table (CSV)")
    p.set_defaults(func=run)


def _floats(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise DepthFXError(
            f"bad --mean/--std {text!r}: expected numbers like 0.5,0.5,0.5"
        ) from None


def _shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise DepthFXError(f"bad --shard {text!r}: expected K/N such as 0/4") from None
    return k, n


#: Per executor: the flags it takes → its option names.
EXECUTOR_FLAGS: dict[str, dict[str, str]] = {
    "serial": {},
    "processes": {"workers": "workers", "cpus_per_entry": "threads", "gpus_per_entry": "gpus",
                  "max_retries": "max_retries"},
    "ray": {"workers": "local_cpus", "address": "address", "cpus_per_entry": "num_cpus",
            "gpus_per_entry": "num_gpus", "max_retries": "max_retries"},
}  # fmt: skip


def executor_options(args: argparse.Namespace) -> dict[str, object]:
    """The ``executor_options`` of ``--executor`` from the flags given."""
    names = EXECUTOR_FLAGS[args.executor]
    flags = ("workers", "address", "cpus_per_entry", "gpus_per_entry", "max_retries")
    given = {f: getattr(args, f) for f in flags if getattr(args, f) is not None}
    wrong = [f for f in given if f not in names]
    if wrong:
        listed = ", ".join("--" + f.replace("_", "-") for f in wrong)
        raise DepthFXError(f"{listed}: not an option of --executor {args.executor}")
    options = {names[f]: v for f, v in given.items()}
    if "gpus" in options:
        if options["gpus"] != 1:
            raise DepthFXError("--executor processes runs one worker per GPU: --gpus-per-entry 1")
        options["gpus"] = True
    return options


def run(args: argparse.Namespace) -> int:
    import torch

    from depthfx.commands.model_args import parse_shape
    from depthfx.data import load_dataset
    from depthfx.measure.importance import measure_importance, write_raw_csv
    from depthfx.measure.importance.measure import default_options
    from depthfx.models import load_model
    from depthfx.solver import LatencyTable

    if args.output.suffix not in (".json", ".csv"):
        raise DepthFXError(f"--output {args.output}: use a .json or .csv file name")
    model = load_model(args.model, args.weights).eval()
    mean, std = _floats(args.mean), _floats(args.std)

    def dataset(spec: str | None, shape: tuple[int, ...] | None):
        return None if spec is None else load_dataset(spec, input_shape=shape, mean=mean, std=std)

    shape = parse_shape(args.input_shape) if args.input_shape else None
    data = dataset(args.data, shape[1:] if shape else None)
    if shape is None:
        shape = (1, *data.tensors[0].shape[1:]) if data is not None else parse_shape(None)
    if data is not None and args.method == "proxy" and bool((data.tensors[1] < 0).all()):
        data = [x for (x,) in zip(data.tensors[0].split(64), strict=True)]  # unlabelled
    example = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed))
    bn = {"on": True, "one-pass": "one-pass", "off": False, None: None}[args.bn_recalibration]
    chosen = {"bn_recalibration": bn, "estimate": args.estimate, "images": args.images}
    proxy = default_options(data, chosen) if args.method == "proxy" else chosen
    table = measure_importance(
        model,
        example,
        data,
        args.method,
        train_data=dataset(args.train_data, shape[1:]),
        strided=args.strided,
        exclude=args.exclude,
        score=args.score,
        estimate=proxy["estimate"] or "fisher",
        bn_recalibration=proxy["bn_recalibration"],
        images=proxy["images"],
        batch_size=args.batch_size,
        norm=args.norm,
        alpha=args.alpha,
        epochs=args.epochs,
        steps=args.steps,
        lr=args.lr,
        cache=args.cache,
        shard=_shard(args.shard),
        seed=args.seed,
        latency=None if args.latency is None else LatencyTable.read_json(args.latency),
        threads=args.threads,
        executor=args.executor,
        executor_options=executor_options(args),
    )
    table.meta["model_spec"] = args.model
    table.meta["data"] = {"data": args.data, "train_data": args.train_data}
    if args.output.suffix == ".json":
        table.write_json(args.output)
    else:
        write_raw_csv(table, args.output)
    if args.ext_csv is not None:
        table.extended().write_csv(args.ext_csv)
    values = list(table.scores.values())
    print(
        f"{len(values)} entries, score {table.score} in [{min(values):.4g}, {max(values):.4g}], "
        f"norm {table.norm} (alpha {table.alpha:g}) -> {args.output}"
    )
    return 0
