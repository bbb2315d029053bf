"""Fixtures shared by the backend tests: one small exported resnet18, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


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
