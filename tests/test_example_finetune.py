"""examples/finetune_fashion_mnist.py with tiny settings: the numbers it prints are sane and
the ONNX file it writes computes what the fine-tuned merged model computes."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import onnxruntime as ort
import pytest
import torch

from depthfx.data import FASHION_MNIST_DIR, load_dataset

EXAMPLE = Path(__file__).parents[1] / "examples" / "finetune_fashion_mnist.py"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("one_torch_thread"),  # the example sets torch threads; restored
    pytest.mark.skipif(
        not FASHION_MNIST_DIR.is_dir(),
        reason="needs dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
    ),
]


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("finetune_fashion_mnist", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_finetune_example_tiny(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    example = _example()
    onnx = tmp_path / "fm.onnx"
    args = example.parse_args([
        "--train", "2000", "--test", "500", "--calib", "32", "--epochs", "2",
        "--finetune-epochs", "1", "--budget", "0.8", "--width", "8", "--blocks", "1",
        "--cache", str(tmp_path / "lat"), "--output", str(onnx),
    ])  # fmt: skip
    result = example.run(args)
    printed = capsys.readouterr().out

    assert result["convs_after"] < result["convs_before"] == 12  # 3 stages × (conv + 3 in a block)
    for key in ("top1_original", "top1_no_finetune", "top1_finetuned"):
        assert 0.0 <= result[key] <= 100.0
        assert f"{result[key]:6.2f}%" in printed
    assert result["top1_original"] > 30.0  # 10 classes: chance is 10%
    assert result["top1_finetuned"] > 30.0
    assert result["speedup"] > 0 and result["measured_ms"] > 0 and result["baseline_ms"] > 0
    assert f"speed-up {result['speedup']:.2f}x" in printed
    assert result["predicted_ms"] <= result["plan"].budget_ms * 1.01

    # The ONNX file exists and equals the merged torch model (ORT vs torch, 1e-4), so its
    # accuracy is the fine-tuned accuracy.
    assert onnx.is_file()
    x, _ = load_dataset("fashion-mnist-test[:64]").tensors
    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = result["merged"](x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert result["top1_onnx"] == pytest.approx(
        result["top1_finetuned"], abs=0.5
    )  # a near-tie may flip
