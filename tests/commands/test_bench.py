"""``depthfx bench`` in-process, and the benchmark/compare API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import depthfx
from depthfx import cli
from depthfx.backends.onnx_blocks import conv_block_model


def test_bench_onnx_writes_json(
    resnet18_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setattr(cli, "COMMANDS", ("bench",))  # independent of other subcommands
    out = tmp_path / "out.json"
    argv = [str(resnet18_onnx), "--batch", "2", "--warmup", "0.05", "--blocks", "3"]
    assert cli.main(["bench", *argv, "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["median_ms"] > 0
    assert data["iqr_ms"] >= 0
    assert len(data["samples_ms"]) == 3
    assert data["n_per_block"] >= 1
    assert data["fingerprint"]["threads"] == 1
    assert data["fingerprint"]["input_shape"] == [[2, 3, 64, 64]]
    assert data["fingerprint"]["providers"] == ["CPUExecutionProvider"]
    printed = capsys.readouterr().out
    assert "median" in printed and "IQR" in printed and "onnxruntime/cpu" in printed


def test_bench_missing_file_is_a_clean_error(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(cli, "COMMANDS", ("bench",))
    assert cli.main(["bench", "missing.onnx"]) == 2
    assert "ONNX file not found" in capsys.readouterr().err


def test_benchmark_and_interleaved_compare() -> None:
    big = conv_block_model(16, 16, 5, (32, 32), pads=2, activation="relu")
    small = conv_block_model(16, 16, 1, (32, 32), activation="relu")
    res = depthfx.benchmark(big, warmup_s=0.02, blocks=3, block_s=0.005)
    assert res.median_ms > 0 and res.fingerprint["backend"] == "onnxruntime"
    cmp = depthfx.compare(big, small, warmup_s=0.02, rounds=4, block_s=0.005)
    assert cmp.speedup > 0
    assert set(cmp.to_dict()) == {"a", "b", "speedup", "speedup_iqr"}
