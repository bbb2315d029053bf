"""GPU paths: ORT CUDA EP with IO binding, torch CUDA events, TensorRT (skipped without GPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from depthfx.backends.base import get_backend
from depthfx.backends.onnx_blocks import conv_block_model


def _reference(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return model.eval()(x).numpy()


@pytest.mark.gpu
def test_ort_cuda_io_binding(resnet18_onnx: Path, resnet18: nn.Module) -> None:
    x = torch.randn(2, 3, 64, 64)
    run = get_backend("onnxruntime", device="cuda").prepare(resnet18_onnx, (x,))
    assert run.fingerprint["providers"][0] == "CUDAExecutionProvider"
    assert run.fingerprint["ort_options"]["io_binding"] is True
    (out,) = run.outputs()
    np.testing.assert_allclose(out, _reference(resnet18, x), rtol=1e-3, atol=1e-3)
    t = run.time(warmup_s=0.1, blocks=5)
    assert t.median_ms > 0
    assert run.fingerprint["device_name"]


@pytest.mark.gpu
def test_ort_cuda_conv_block() -> None:
    run = get_backend("onnxruntime", device="cuda").prepare(
        conv_block_model(32, 32, 3, (28, 28), pads=1, activation="relu")
    )
    assert run.outputs()[0].shape == (1, 32, 28, 28)
    assert run.time(warmup_s=0.05, blocks=5).median_ms > 0


@pytest.mark.gpu
@pytest.mark.parametrize("compile", [False, True])
def test_torch_cuda_events(resnet18: nn.Module, compile: bool) -> None:
    x = torch.randn(1, 3, 64, 64)
    run = get_backend("torch", device="cuda", compile=compile).prepare(resnet18, (x,))
    (out,) = run.outputs()
    np.testing.assert_allclose(out, _reference(resnet18, x), rtol=1e-3, atol=1e-3)
    t = run.time(warmup_s=0.1, blocks=5)
    assert t.median_ms > 0
    assert run.fingerprint["cuda"] == torch.version.cuda


@pytest.mark.trt
@pytest.mark.parametrize(("precision", "tol"), [("fp32", 1e-2), ("fp16", 5e-2)])
def test_torch_tensorrt_dynamo(
    resnet18: nn.Module, tmp_path: Path, precision: str, tol: float
) -> None:
    x = torch.randn(1, 3, 64, 64)
    backend = get_backend("tensorrt", precision=precision, cache_dir=tmp_path)
    run = backend.prepare(resnet18, (x,))
    (out,) = run.outputs()
    want = _reference(resnet18, x)
    assert np.abs(out - want).max() <= tol * max(1.0, np.abs(want).max())
    assert run.time(warmup_s=0.1, blocks=5).median_ms > 0
    assert run.fingerprint["precision"] == precision


@pytest.mark.trt
def test_onnx_to_tensorrt_engine_is_cached(
    resnet18_onnx: Path, resnet18: nn.Module, tmp_path: Path
) -> None:
    x = torch.randn(2, 3, 64, 64)
    backend = get_backend("tensorrt", path="onnx", cache_dir=tmp_path)
    run = backend.prepare(resnet18_onnx, (x,))
    (out,) = run.outputs()
    np.testing.assert_allclose(out, _reference(resnet18, x), rtol=1e-2, atol=1e-2)
    assert run.time(warmup_s=0.1, blocks=5).median_ms > 0
    engines = list(tmp_path.glob("*.engine"))
    assert len(engines) == 1
    assert (tmp_path / "timing.cache").is_file()
    backend.prepare(resnet18_onnx, (x,))  # second build comes from the cache
    assert list(tmp_path.glob("*.engine")) == engines
