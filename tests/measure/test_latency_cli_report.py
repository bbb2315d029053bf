"""``depthfx table latency`` and the predicted-vs-measured report."""

from __future__ import annotations

import argparse
import inspect
import math
from pathlib import Path

import pytest
import torch
from latency_helpers import SmallNet
from torch import nn

import depthfx.cli
import depthfx.commands.table
from depthfx.errors import FingerprintMismatch
from depthfx.measure.latency_table import load_table
from depthfx.passes.analyze import analyze
from depthfx.passes.convert import convert
from depthfx.passes.prepare import prepare
from depthfx.report import latency_report
from depthfx.solver import LatencyTable
from depthfx.testing import random_plan


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    import latency_helpers

    path = tmp_path / "small.py"
    path.write_text(
        inspect.getsource(latency_helpers) + "\n\ndef make():\n    return small_net()\n"
    )
    return path


def test_cli_writes_json_and_csv_and_refuses_another_setting(
    model_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(depthfx.cli, "COMMANDS", ("table",))
    monkeypatch.setattr(depthfx.commands.table, "KINDS", ("latency",))
    out, csv = tmp_path / "t.json", tmp_path / "t.csv"
    args = ["table", "latency", f"{model_file}:make", "--input-shape", "1,3,16,16", "-o", str(out)]
    # --no-calibration keeps this fast; the calibration has its own tests (injected timings).
    cache = ["--cache", str(tmp_path / "c"), "--no-calibration"]
    assert depthfx.cli.main([*args, "--csv", str(csv), *cache]) == 0
    table = load_table(out)
    assert len(table.times) == 15 and table.meta["fingerprint"]["threads"] == 1
    assert "calibration" not in table.meta
    assert load_table(csv).times == pytest.approx(table.times)
    printed = capsys.readouterr().out
    assert "end-to-end" in printed and "latency model  raw additive model" in printed
    assert depthfx.cli.main([*args, "--threads", "2"]) == 2
    assert "threads" in capsys.readouterr().err
    assert load_table(out).meta["fingerprint"]["threads"] == 1  # not overwritten


def test_register_builds_the_documented_options() -> None:
    from depthfx.commands.table_latency import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    ns = parser.parse_args(["latency", "torchvision:resnet18", "-o", "t.json", "--jobs", "2"])
    assert (ns.backend, ns.device, ns.batch, ns.threads, ns.jobs) == ("onnxruntime", "cpu", 1, 1, 2)
    assert ns.strided == "general" and ns.cache is None and not ns.force
    assert not ns.no_calibration  # calibrated by default


def test_report_predicted_vs_measured(net: nn.Module, x: torch.Tensor, table: LatencyTable) -> None:
    plan = random_plan(analyze(net, (x,)), seed=3)
    merged = convert(prepare(net, plan, (x,)), plan, (x,))
    report = latency_report(net, merged, plan, table, (x,), threads=1, rounds=5)
    for value in (report.baseline_ms, report.measured_ms, report.predicted_ms, report.speedup):
        assert math.isfinite(value) and value > 0
    assert report.error == pytest.approx(
        (report.predicted_ms - report.measured_ms) / report.measured_ms
    )
    assert report.predicted_baseline_ms == pytest.approx(table.meta["end_to_end_ms"])
    text = str(report)
    assert "predicted" in text and "speed-up" in text
    assert set(report.to_dict()) >= {
        "baseline_ms",
        "predicted_ms",
        "measured_ms",
        "error",
        "speedup",
    }
    with pytest.raises(FingerprintMismatch, match="threads"):
        latency_report(net, merged, plan, table, (x,), threads=2, rounds=2)


def test_report_rejects_a_plan_of_another_model(table: LatencyTable) -> None:
    from depthfx.errors import TableError
    from depthfx.testing import original_plan

    other = SmallNet().eval()
    other.stem[0] = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    plan = original_plan(analyze(nn.Sequential(other.stem), (torch.randn(1, 3, 16, 16),)))
    with pytest.raises(TableError, match="not in the table"):
        from depthfx.measure.prediction import predict_ms

        predict_ms(table, plan)
