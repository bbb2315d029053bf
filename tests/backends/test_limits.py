"""Load limits: ONNX's 2 GiB with ORT's padded reorder, and the share of free memory."""

from __future__ import annotations

from depthfx.backends.limits import (
    ONNX_PROTOBUF_BYTES,
    ORT_SAFETY,
    available_memory,
    ort_weight_bytes,
    weight_limit_reason,
)


def test_reorder_estimate_pads_channels_like_nchwc() -> None:
    assert ort_weight_bytes(16, 16, (3, 3)) == 4 * 16 * 16 * 9
    assert ort_weight_bytes(1000, 3, (5, 5)) == 4 * 1008 * 3 * 25  # OIHWBo: outputs only
    assert ort_weight_bytes(1000, 100, (5, 5)) == 4 * 1008 * 112 * 25  # OIHWBiBo: both


def test_limits_name_the_reason() -> None:
    # MobileNetV2 at 96×96, general strides: 96→1280 at 80×80 taps, 2.9 GiB.
    why = weight_limit_reason(1280, 96, 1, (80, 80), onnx=True, memory=None)
    assert why is not None and "depthfx.convert" in why  # 5.9 GiB in float64
    # Depthwise: tiny in float32 (raw and reordered), but convert counts the dense float64.
    why = weight_limit_reason(4096, 4096, 4096, (64, 64), onnx=True, memory=None)
    assert why is not None and "depthfx.convert" in why
    # Odd channels within convert's limit (1.8 GiB float64) whose ORT reorder, padded to
    # 32×16 channels, exceeds 2 GiB: only the ONNX backend refuses it.
    why = weight_limit_reason(17, 9, 1, (1257, 1257), onnx=True, memory=None)
    assert why is not None and "2 GiB protobuf limit" in why
    assert weight_limit_reason(17, 9, 1, (1257, 1257), onnx=False, memory=None) is None
    assert ORT_SAFETY * ort_weight_bytes(17, 9, (1257, 1257)) > ONNX_PROTOBUF_BYTES
    assert weight_limit_reason(1280, 96, 1, (24, 24), onnx=True, memory=None) is None
    # Memory: about 6 copies of 0.5 GiB of weights do not fit in half of 4 GiB, nor 2 builds in 8.
    why = weight_limit_reason(512, 1024, 1, (16, 16), onnx=False, memory=4 << 30)
    assert why is not None and "available" in why
    assert weight_limit_reason(512, 1024, 1, (16, 16), onnx=False, memory=8 << 30) is None
    assert weight_limit_reason(512, 1024, 1, (16, 16), onnx=False, memory=8 << 30, jobs=2)


def test_available_memory_is_read() -> None:
    memory = available_memory()
    assert memory is None or memory > 0
