"""Shared pytest configuration: GPU-only tests skip cleanly on machines without CUDA."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

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
def one_torch_thread() -> Iterator[None]:
    """Run a test on one torch thread: on a shared 2-core machine OpenMP spin-waiting makes
    2 threads many times slower for the small tensors of the tests."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def data_dir() -> Path:
    """The bundled test data (paper tables, synthetic importance), see tests/data/README.md."""
    return DATA


# One small exported resnet18, built once per session (backend and bench tests).
@pytest.fixture(scope="session")
def resnet18() -> torch.nn.Module:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


@pytest.fixture(scope="session")
def small_input() -> torch.Tensor:
    return torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def resnet18_onnx(
    tmp_path_factory: pytest.TempPathFactory, resnet18: torch.nn.Module, small_input: torch.Tensor
) -> Path:
    from depthfx.export import export_onnx

    return export_onnx(resnet18, tmp_path_factory.mktemp("onnx") / "resnet18.onnx", small_input)
