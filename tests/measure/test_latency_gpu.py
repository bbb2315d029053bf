"""Latency tables on the GPU paths (ONNX Runtime CUDA EP, TensorRT); skipped without a GPU."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from latency_helpers import FAST
from torch import nn

from depthfx.measure.latency_table import measure_latency_table


@pytest.mark.gpu
def test_ort_cuda_table(net: nn.Module, x: torch.Tensor) -> None:
    table = measure_latency_table(net, (x,), device="cuda", protocol=FAST)
    fp = table.meta["fingerprint"]
    assert fp["providers"][0] == "CUDAExecutionProvider" and fp["device_name"]
    assert len(table.times) == 15
    assert all(math.isfinite(t) and t > 0 for t in table.times.values())


@pytest.mark.trt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_table(net: nn.Module, x: torch.Tensor, precision: str, tmp_path: Path) -> None:
    table = measure_latency_table(
        net,
        (x,),
        backend="tensorrt",
        device="cuda",
        protocol=FAST,
        backend_options={"precision": precision, "cache_dir": tmp_path},
    )
    fp = table.meta["fingerprint"]
    assert fp["backend"] == "tensorrt" and fp["precision"] == precision
    assert len(table.times) == 15
    assert all(math.isfinite(t) and t > 0 for t in table.times.values())
    assert table.meta["end_to_end_ms"] > 0
