"""Shared pytest configuration: GPU-only tests skip cleanly on machines without CUDA."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    has_cuda = _cuda_available()
    has_trt = importlib.util.find_spec("torch_tensorrt") is not None
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "trt" in item.keywords and not (has_cuda and has_trt):
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU and torch-tensorrt"))


@pytest.fixture
def data_dir() -> Path:
    """The bundled test data (paper tables, synthetic importance), see tests/data/README.md."""
    return DATA
