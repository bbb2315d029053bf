"""export_onnx: checked, verified against torch, dynamic batch, atomic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import depthfx
from depthfx.errors import DepthFXError
from depthfx.export import export_onnx


def test_resnet18_export_matches_torch_and_batch_is_dynamic(
    resnet18_onnx: Path, resnet18: nn.Module
) -> None:
    assert resnet18_onnx.is_file()
    model = onnx.load(resnet18_onnx)
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert "BatchNormalization" not in ops  # the exporter's optimiser folded BN
    assert ops.count("Conv") == 20
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    sess = ort.InferenceSession(str(resnet18_onnx), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 64, 64)
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.inference_mode():
        want = resnet18(x).numpy()
    assert got.shape == (3, 1000)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    leftovers = [p for p in resnet18_onnx.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_public_lazy_name() -> None:
    assert depthfx.export_onnx is export_onnx


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


def test_mismatch_raises_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime

    real_run = onnxruntime.InferenceSession.run

    def corrupted(self, *args, **kwargs):
        return [o + 0.5 for o in real_run(self, *args, **kwargs)]

    monkeypatch.setattr(onnxruntime.InferenceSession, "run", corrupted)
    target = tmp_path / "tiny.onnx"
    with pytest.raises(DepthFXError, match=r"max abs error 0\.5"):
        export_onnx(Tiny(), target, torch.randn(1, 3, 8, 8))
    assert list(tmp_path.iterdir()) == []


def test_unexportable_module_raises_and_leaves_no_file(tmp_path: Path) -> None:
    class Bad(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.linalg.cholesky(x[0, 0] @ x[0, 0].T + torch.eye(4))  # no ONNX op

    with pytest.raises(DepthFXError, match=r"torch\.onnx\.export failed.*cholesky"):
        export_onnx(Bad(), tmp_path / "bad.onnx", torch.randn(1, 3, 4, 4))
    assert list(tmp_path.iterdir()) == []


def test_train_mode_module_is_exported_in_eval_and_restored(tmp_path: Path) -> None:
    m = Tiny().train()
    path = export_onnx(m, tmp_path / "t.onnx", torch.randn(2, 3, 8, 8), dynamic_batch=False)
    assert m.training and m.bn.training
    ops = [n.op_type for n in onnx.load(path).graph.node]
    assert "BatchNormalization" not in ops
    assert onnx.load(path).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
