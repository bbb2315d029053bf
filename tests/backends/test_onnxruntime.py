"""ONNX Runtime backend: explicit, verified providers; timing; fingerprints."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from depthfx.backends.base import Fingerprint, get_backend
from depthfx.backends.onnx_blocks import conv_block_model
from depthfx.errors import DepthFXError, FingerprintMismatch

DOCUMENTED_KEYS = {
    "backend",
    "device",
    "device_name",
    "cpu_model",
    "driver",
    "cuda",
    "cudnn",
    "torch",
    "onnx",
    "onnxruntime",
    "tensorrt",
    "threads",
    "precision",
    "batch",
    "input_shape",
    "ort_options",
    "providers",
    "clock",
}


def test_cuda_request_without_cuda_ep_raises_clearly() -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA EP")
    backend = get_backend("onnxruntime", device="cuda")
    with pytest.raises(DepthFXError, match="CUDAExecutionProvider is not available"):
        backend.prepare(conv_block_model(4, 4, 3, (8, 8)))


def test_silent_fallback_is_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    # Simulate an onnxruntime that lists the CUDA EP but falls back to CPU when loading it.
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    real = ort.InferenceSession

    def fallback(model, opts, providers, provider_options):
        return real(model, opts, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "InferenceSession", fallback)
    backend = get_backend("onnxruntime", device="cuda")
    with pytest.raises(DepthFXError, match="fell back"):
        backend.prepare(conv_block_model(4, 4, 3, (8, 8)))


def test_bad_settings_raise() -> None:
    with pytest.raises(DepthFXError, match="provider"):
        get_backend("onnxruntime", device="cpu", provider="cuda")
    with pytest.raises(DepthFXError, match="device"):
        get_backend("onnxruntime", device="tpu")
    with pytest.raises(DepthFXError, match="threads"):
        get_backend("onnxruntime", threads=0)


def test_runs_onnx_file_times_and_fingerprints(resnet18_onnx: Path, resnet18: nn.Module) -> None:
    backend = get_backend("onnxruntime", threads=1, batch=2)
    run = backend.prepare(resnet18_onnx)  # no examples: random inputs, symbolic batch = 2
    (out,) = run.outputs()
    assert out.shape == (2, 1000)
    t = run.time(warmup_s=0.05, blocks=3, block_s=0.01)
    assert t.median_ms > 0 and math.isfinite(t.median_ms)
    assert t.iqr_ms >= 0 and math.isfinite(t.iqr_ms)
    fp = run.fingerprint
    assert set(fp) >= DOCUMENTED_KEYS
    assert fp["providers"] == ["CPUExecutionProvider"]
    assert fp["threads"] == 1
    assert fp["ort_options"]["graph_optimization_level"] == "ORT_ENABLE_ALL"
    assert fp["ort_options"]["intra_op_num_threads"] == 1
    assert fp["input_shape"] == [[2, 3, 64, 64]]
    assert fp["batch"] == 2
    assert fp["clock"] == "thread_cpu"  # one CPU thread: timed by its CPU time
    assert Fingerprint.from_json(fp.to_json()) == fp


def test_module_is_exported_and_outputs_match_torch() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6()).eval()
    x = torch.randn(1, 3, 16, 16)
    run = get_backend("onnxruntime").prepare(m, (x,))
    (out,) = run.outputs()
    np.testing.assert_allclose(out, m(x).detach().numpy(), rtol=1e-4, atol=1e-4)
    assert run() is not None


def test_fingerprint_mismatch_names_keys_and_force_passes() -> None:
    model = conv_block_model(8, 8, 3, (16, 16), pads=1, activation="relu")
    one = get_backend("onnxruntime", threads=1).prepare(model).fingerprint
    two = get_backend("onnxruntime", threads=2).prepare(model).fingerprint
    one.check_compatible(one)
    with pytest.raises(FingerprintMismatch, match="threads") as err:
        one.check_compatible(two)
    assert "ort_options" in str(err.value)
    assert set(one.diff(two)) == {"threads", "ort_options", "clock"}  # 2 threads: wall clock
    one.check_compatible(two, force=True)
    changed = Fingerprint(dict(one), device_name="Other GPU", gpu_clocks_mhz="1")
    assert list(one.diff(changed)) == ["device_name"]  # clocks are volatile, never compared
    assert "onnxruntime/cpu" in one.summary()


def test_clock_choice_reaches_runnable_and_fingerprint() -> None:
    from depthfx.backends.timing import ThreadCpuClock

    model = conv_block_model(8, 8, 3, (16, 16), pads=1, activation="relu")
    auto = get_backend("onnxruntime").prepare(model)
    wall = get_backend("onnxruntime", clock="wall").prepare(model)
    assert isinstance(auto.clock, ThreadCpuClock) and auto.fingerprint["clock"] == "thread_cpu"
    assert wall.clock is None and wall.fingerprint["clock"] == "wall"
    assert auto.fingerprint.diff(wall.fingerprint) == {"clock": ("thread_cpu", "wall")}
    with pytest.raises(DepthFXError, match="one thread"):
        get_backend("onnxruntime", threads=2, clock="cpu")
