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


def _modules_after(code: str) -> set[str]:
    """Runtime packages imported after ``code`` runs in a fresh interpreter."""
    probe = (
        f"import sys\n{code}\n"
        "print(','.join(m for m in ('onnxruntime', 'tensorrt', 'torch_tensorrt') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(filter(None, out.stdout.strip().split(",")))


def test_get_backend_imports_its_runtime_on_first_use_only() -> None:
    # A fresh interpreter: this test process has long imported onnxruntime.
    listed = "from depthfx.backends.base import available_backends\navailable_backends()"
    assert _modules_after(listed) == set()
    torch_only = "from depthfx.backends.base import get_backend\nget_backend('torch')"
    assert _modules_after(torch_only) == set()
    ort = "from depthfx.backends.base import get_backend\nget_backend('onnxruntime', threads=1)"
    assert _modules_after(ort) == {"onnxruntime"}


def test_get_backend_rejects_unknown() -> None:
    assert {"onnxruntime", "torch", "tensorrt"} <= set(available_backends())
    assert get_backend("onnxruntime", threads=1).name == "onnxruntime"
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
