"""Backend registry and lazy imports."""

from __future__ import annotations

import subprocess
import sys

import pytest

from depthfx.backends.base import available_backends, get_backend, register_backend
from depthfx.errors import DepthFXError


def test_import_depthfx_imports_no_runtime() -> None:
    code = (
        "import sys, depthfx, depthfx.backends.base; "
        "print(','.join(m for m in ('onnxruntime', 'tensorrt', 'torch_tensorrt') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_get_backend_imports_lazily_and_rejects_unknown() -> None:
    assert {"onnxruntime", "torch", "tensorrt"} <= set(available_backends())
    backend = get_backend("onnxruntime", threads=1)
    assert backend.name == "onnxruntime"
    assert "onnxruntime" in sys.modules
    with pytest.raises(DepthFXError, match="unknown backend 'nope'"):
        get_backend("nope")


def test_register_backend_adds_a_name() -> None:
    @register_backend("dummy-test")
    class Dummy:
        device = "cpu"

        def __init__(self, scale: int = 1) -> None:
            self.scale = scale

    got = get_backend("dummy-test", scale=3)
    assert isinstance(got, Dummy)
    assert got.scale == 3
    assert "dummy-test" in available_backends()
