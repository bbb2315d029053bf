"""``--method`` in ``depthfx compile`` and ``depthfx bench --sweep``: pruned plans on a tiny model
(ICML'23 tables measured once and given as ``--latency/--importance``, variant timings in a
module cache), the budget round trip, and clean errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from depthfx.cli import main
from depthfx.commands.compile import METHODS
from depthfx.measure import layermerge_plan
from depthfx.models import load_model
from depthfx.plans import Plan
from depthfx.solver import ImportanceTable, LatencyTable

MODELS = Path(__file__).parent / "toy_models.py"
SPEC = f"{MODELS}:tiny_mobilenet"
COMMON = ["--input-shape", "1,3,32,32", "--images", "8"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The tables for the module (the tests differ in methods and budgets, not tables): the
    ICML'23 ones as files, the variants' block timings in a cache folder."""
    folder = tmp_path_factory.mktemp("cache")
    model, x = load_model(SPEC), torch.randn(1, 3, 32, 32)
    latency = LatencyTable.measure(model, (x,), cache_dir=folder)
    with pytest.warns(UserWarning, match="without data"):
        importance = ImportanceTable.measure(model, (x,), None, images=8, latency=latency)
    latency.write_json(folder / "lat.json")
    importance.write_json(folder / "imp.json")
    return [
        "--cache", str(folder), "--latency", str(folder / "lat.json"), "--importance",
        str(folder / "imp.json"),
    ]  # fmt: skip


def test_methods_match_the_api() -> None:
    assert layermerge_plan.METHODS == METHODS


@pytest.mark.parametrize("method", ["layermerge", "combined"])
def test_compile_fastest_with_method_prunes_and_reports_it(
    method: str, tmp_path: Path, cache: list[str], capsys: pytest.CaptureFixture
) -> None:
    plan_path, report_path = tmp_path / "p.json", tmp_path / "r.json"
    args = [
        "compile", SPEC, *COMMON, "--budget", "fastest", "--method", method, *cache,
        "--plan-out", str(plan_path), "--report", str(report_path),
    ]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    report = json.loads(report_path.read_text())
    plan = Plan.load(plan_path)
    pruned = sum(len(c.pruned) for c in plan.chains)
    assert report["method"] == method and report["pruned_convs"] == pruned
    assert report["convs_after"] == sum(len(c.groups()) for c in plan.chains) < 10
    assert 0 <= report["max_abs_error"] < 1e-4
    assert f"method {method})" in printed
    assert re.search(rf"convs pruned\s+{pruned}\n", printed)


@pytest.mark.parametrize(
    ("method", "passed"), [("icml23", "--budget-ms"), ("layermerge", "--budget-ms"),
                           ("combined", "--budget")],
)  # fmt: skip
def test_infeasible_budget_passed_back_compiles_at_once(
    method: str, passed: str, tmp_path: Path, cache: list[str], capsys: pytest.CaptureFixture
) -> None:
    args = ["compile", SPEC, *COMMON, "--method", method, *cache]
    assert main([*args, "--budget", "0.01"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("depthfx: error: budget") and "infeasible" in error
    (minimum,) = re.findall(r"needs at least (\S+) ms", error)
    (fraction,) = re.findall(r"budget of at least (\S+) of the original", error)
    report = tmp_path / "report.json"
    value = minimum if passed == "--budget-ms" else fraction
    assert main([*args, passed, value, "--report", str(report)]) == 0
    budget_ms = json.loads(report.read_text())["budget_ms"]
    assert float(minimum) <= budget_ms <= float(minimum) * (1 + 1e-9)


def test_sweep_with_method(tmp_path: Path, cache: list[str], capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sweep.json"
    args = [
        "bench", SPEC, "--input-shape", "1,3,32,32", "--images", "8", "--sweep", "0.01,fastest",
        "--method", "layermerge", *cache[:4], "--blocks", "4", "--json", str(out),
    ]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["method"] == "layermerge" and result["variant_tables_s"] > 0
    assert result["latency_table_s"] is None  # given
    assert result["importance_table_s"] is None  # layermerge scores its variants only
    infeasible, fastest = result["rows"]
    assert not infeasible["feasible"] and infeasible["min_budget"] == pytest.approx(
        fastest["budget"], rel=1e-9
    )
    plan = Plan.from_json(fastest["plan"])
    assert fastest["pruned"] == sum(len(c.pruned) for c in plan.chains) > 0
    assert fastest["convs_after"] == sum(len(c.groups()) for c in plan.chains)
    assert "method layermerge" in printed and "pruned" in printed.splitlines()[1]
    assert "importance table not used (layermerge)" in printed
    assert f"variant tables measured in {result['variant_tables_s']:.1f} s" in printed


def test_unknown_method_is_one_clear_error(capsys: pytest.CaptureFixture) -> None:
    for command in (["compile", SPEC], ["bench", SPEC, "--sweep", "0.8"]):
        with pytest.raises(SystemExit) as exc:
            main([*command, "--method", "nope"])
        assert exc.value.code == 2
        (line,) = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
        assert "invalid choice: 'nope'" in line and "icml23" in line and "combined" in line
    assert main(["bench", SPEC, "--method", "layermerge"]) == 2
    assert capsys.readouterr().err.strip() == "depthfx: error: --method only apply with --sweep"
