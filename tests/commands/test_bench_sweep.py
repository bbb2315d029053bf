"""``depthfx bench --sweep``: the rows' numbers, accuracy, infeasible budgets, plot, errors."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import depthfx
from depthfx.cli import main
from depthfx.data import FASHION_MNIST_DIR, load_dataset
from depthfx.models import load_model
from depthfx.passes.analyze import analyze
from depthfx.plans import Plan
from depthfx.solver import ImportanceTable

MODELS = Path(__file__).parent / "toy_models.py"
SPEC = f"{MODELS}:tiny_mobilenet"
SHAPE = (1, 3, 32, 32)
EVAL = "fashion-mnist-test[:64]"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _activations_removed_importance(path: Path) -> Path:
    """Score = −(original activations an extended block removes): the DP keeps as many
    activations as the budget allows. Hand-made, so the test does not wait for the proxy."""
    analysis = analyze(load_model(SPEC), (torch.randn(SHAPE),), training=False)
    entries = {}
    for chain in analysis.chains:
        acts = chain.default_acts
        for st, end, st_act, end_act in chain.extended_blocks():
            removed = sum(1 for p in range(st + 1, end) if p in acts) + int(
                end in acts and not end_act
            )
            entries[chain.index, st, end, st_act, end_act] = -float(removed)
    table = ImportanceTable.from_entries(
        entries, norm="none", default_acts={c.index: c.default_acts for c in analysis.chains}
    )
    table.write_json(path)
    return path


def _top1(model: torch.nn.Module, spec: str) -> float:
    """Top-1 in percent, computed here (not with depthfx.finetune.evaluate)."""
    data = load_dataset(spec, input_shape=SHAPE[1:])
    x, y = data.tensors
    with torch.no_grad():
        return 100.0 * float((model.eval()(x).argmax(1) == y).float().mean())


@pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir(),
    reason="needs dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
)
def test_sweep_rows_accuracy_infeasible_and_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out, png = tmp_path / "sweep.json", tmp_path / "sweep.png"
    importance = _activations_removed_importance(tmp_path / "imp.json")
    args = [
        "bench", SPEC, "--input-shape", ",".join(map(str, SHAPE)), "--sweep", "0.95,0.01",
        "--importance", str(importance), "--cache", str(tmp_path / "lat"), "--eval-data", EVAL,
        "--blocks", "6", "--json", str(out), "--plot", str(png), "--onnx-dir", str(tmp_path),
    ]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    model = load_model(SPEC)

    assert result["convs_before"] == 10 and result["latency_table_s"] > 0
    assert result["importance_table_s"] is None  # given, not measured
    assert result["accuracy_note"] == "top-1 without fine-tuning"
    assert result["baseline_accuracy"] == pytest.approx(_top1(model, EVAL))

    ok, infeasible = result["rows"]
    assert ok["feasible"] and ok["budget"] == 0.95
    assert ok["budget_ms"] == pytest.approx(0.95 * result["table_ms"])
    assert ok["predicted_ms"] <= ok["budget_ms"] * 1.01  # floor discretisation slack
    assert ok["measured_ms"] > 0 and ok["baseline_ms"] > 0 and ok["speedup"] > 0
    assert ok["error"] == pytest.approx(
        (ok["predicted_ms"] - ok["measured_ms"]) / ok["measured_ms"]
    )
    assert ok["max_abs_error"] < 1e-4
    # The row's plan is the model it measured: its merge groups give its conv count, and the
    # merged model's top-1 (no fine-tuning) is the row's accuracy.
    plan = Plan.from_json(ok["plan"])
    assert ok["convs_after"] == sum(len(c.merge_pos) for c in plan.chains) < 10
    merged = depthfx.convert(depthfx.prepare(model, plan), plan)
    assert ok["accuracy"] == pytest.approx(_top1(merged, EVAL))
    assert ok["onnx"] == str(tmp_path / "budget_0.95.onnx")
    x = torch.randn(3, *SHAPE[1:])
    session = ort.InferenceSession(ok["onnx"], providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, merged(x).numpy(), rtol=1e-4, atol=1e-4)

    assert not infeasible["feasible"] and infeasible["measured_ms"] is None
    assert 0.01 < infeasible["min_budget"] <= 1.0  # the all-merged chain still costs something
    assert f"{ok['speedup']:.2f}×" in printed and "infeasible" in printed
    assert f"smallest feasible budget is {infeasible['min_budget']!r}" in printed
    assert "without fine-tuning" in printed

    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_plot_without_matplotlib_fails_before_measuring(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import raises ImportError

    def no_sweep(*args: object, **kwargs: object) -> None:
        raise AssertionError("the sweep ran before the missing matplotlib was reported")

    monkeypatch.setattr("depthfx.sweep.sweep", no_sweep)
    args = ["bench", SPEC, "--sweep", "0.8", "--plot", str(tmp_path / "p.png")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith("depthfx: error:") and 'pip install "depthfx[plot]"' in err
    assert not (tmp_path / "p.png").exists()


def test_sweep_options_need_sweep(capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", SPEC, "--eval-data", EVAL, "--plot", "x.png"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "depthfx: error: --eval-data, --plot only apply with --sweep"


def test_sweep_rejects_onnx_and_bad_budgets(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"")
    assert main(["bench", str(onnx), "--sweep", "0.8"]) == 2
    assert "needs a PyTorch model spec" in capsys.readouterr().err
    for bad in ("0.8,zero", "0.8,-0.1", "", "0.8,fastestest"):
        with pytest.raises(SystemExit) as exc:
            main(["bench", SPEC, "--sweep", bad])
        assert exc.value.code == 2
        assert "expected positive fractions" in capsys.readouterr().err


def test_interrupted_sweep_keeps_the_rows_it_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The JSON is rewritten after every budget: stopping during the second (``fastest``,
    planned and merged before the timing is interrupted) keeps the first."""
    benchmark_module = importlib.import_module("depthfx.benchmark")  # not depthfx.benchmark()

    out = tmp_path / "sweep.json"
    importance = _activations_removed_importance(tmp_path / "imp.json")
    args = [
        "bench", SPEC, "--input-shape", ",".join(map(str, SHAPE)), "--sweep", "0.01,fastest",
        "--importance", str(importance), "--cache", str(tmp_path / "lat"), "--blocks", "4",
        "--json", str(out),
    ]  # fmt: skip

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(benchmark_module, "compare", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(args)
    result = json.loads(out.read_text())
    assert result["model"] == SPEC
    (row,) = result["rows"]
    assert row["budget"] == 0.01 and not row["feasible"] and 0.01 < row["min_budget"] <= 1.0
