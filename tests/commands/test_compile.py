"""``depthfx compile``: output files and the numbers in them, and clean errors (exit 2)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import depthfx
from depthfx.cli import main
from depthfx.commands.compile import REPORT_KEYS
from depthfx.models import load_model
from depthfx.plans import Plan

MODELS = Path(__file__).parent / "toy_models.py"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One table cache for the module: the tests differ in budgets, not in tables."""
    return tmp_path_factory.mktemp("cache")


def test_compile_writes_onnx_plan_and_report(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture
) -> None:
    out, plan_path, report_path = tmp_path / "m.onnx", tmp_path / "p.json", tmp_path / "r.json"
    args = [
        "compile", f"{MODELS}:tiny_mobilenet", "--input-shape", "1,3,32,32", "--budget", "fastest",
        "--images", "8", "-o", str(out), "--plan-out", str(plan_path), "--report", str(report_path),
        "--cache", str(cache),
    ]  # fmt: skip
    assert main(args) == 0
    printed, err = capsys.readouterr()
    # Warnings are one line each, like errors (no Python source lines).
    assert "depthfx: warning: importance proxy without data" in err
    assert "UserWarning" not in err and all(ln.startswith("depthfx: ") for ln in err.splitlines())
    report = json.loads(report_path.read_text())
    assert set(REPORT_KEYS) <= set(report)
    assert report["baseline_ms"] > 0 and report["measured_ms"] > 0 and report["speedup"] > 0
    assert report["convs_after"] <= report["convs_before"] == 10
    assert 0 <= report["max_abs_error"] < 1e-4
    assert report["predicted_ms"] <= report["budget_ms"] * 1.05  # floor discretisation slack
    assert f"{report['speedup']:.2f}×" in printed and "convs" in printed
    # --cache keeps the proxy's sums too (one batch of the 8 images): a re-run resumes.
    (proxy,) = cache.glob("proxy-*.json")
    assert json.loads(proxy.read_text())["state"]["batches"] == 1

    plan = Plan.load(plan_path)
    assert len(plan.chains) == 1 and plan.chains[0].num_convs == 10
    assert report["convs_after"] == len(plan.chains[0].merge_pos)

    # The ONNX file reproduces the merged model the plan describes (ORT CPU vs torch, 1e-4).
    x = torch.randn(2, 3, 32, 32)
    model = load_model(f"{MODELS}:tiny_mobilenet")
    merged = depthfx.convert(depthfx.prepare(model, plan), plan)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(got, merged(x).detach().numpy(), rtol=1e-4, atol=1e-4)


def test_infeasible_budget_is_one_line_exit_2(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture
) -> None:
    args = [
        "compile", f"{MODELS}:tiny_mobilenet", "--input-shape", "1,3,32,32", "--budget", "0.01",
        "--images", "8", "--cache", str(cache),
    ]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    error = err.splitlines()[-1]  # warnings (e.g. proxy on random data) may come before it
    assert error.startswith("depthfx: error: budget") and "infeasible" in error
    assert "at least" in error and "of the original" in error
    # The minimum it names, passed back as the budget, compiles at once (same cached tables).
    (minimum,) = re.findall(r"needs at least (\S+) ms", error)
    (fraction,) = re.findall(r"budget of at least (\S+) of the original", error)
    report = tmp_path / "report.json"
    assert main([*args[:4], "--budget", fraction, *args[6:], "--report", str(report)]) == 0
    budget_ms = json.loads(report.read_text())["budget_ms"]
    assert float(minimum) <= budget_ms <= float(minimum) * (1 + 1e-9)


def test_untraceable_model_is_one_line_exit_2(capsys: pytest.CaptureFixture) -> None:
    assert main(["compile", f"{MODELS}:untraceable", "--input-shape", "1,3,16,16"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith("depthfx: error:") and "DataDependent" in err  # names the module
