"""torch backend: eager and inductor on CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from depthfx.backends.base import get_backend
from depthfx.errors import DepthFXError


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.SiLU()).train()


def test_eager_cpu_runs_times_and_leaves_the_model_alone() -> None:
    m, x = _model(), torch.randn(2, 3, 16, 16)
    run = get_backend("torch", threads=1).prepare(m, (x,))
    assert m.training  # the backend ran a private eval copy
    (out,) = run.outputs()
    np.testing.assert_allclose(out, m.eval()(x).detach().numpy(), rtol=1e-5, atol=1e-5)
    t = run.time(warmup_s=0.02, blocks=3, block_s=0.005)
    assert t.median_ms > 0
    fp = run.fingerprint
    assert fp["backend"] == "torch"
    assert fp["compile"] == "eager"
    assert fp["threads"] == 1
    assert fp["input_shape"] == [[2, 3, 16, 16]]


def test_torch_backend_rejects_bad_input() -> None:
    with pytest.raises(DepthFXError, match=r"nn\.Module"):
        get_backend("torch").prepare("model.onnx", ())
    with pytest.raises(DepthFXError, match="precision"):
        get_backend("torch", precision="fp8")
    if not torch.cuda.is_available():
        with pytest.raises(DepthFXError, match="no CUDA"):
            get_backend("torch", device="cuda")


@pytest.mark.slow
def test_inductor_cpu_matches_eager() -> None:
    m, x = _model().eval(), torch.randn(1, 3, 16, 16)
    run = get_backend("torch", compile=True).prepare(m, (x,))
    (out,) = run.outputs()
    np.testing.assert_allclose(out, m(x).detach().numpy(), rtol=1e-4, atol=1e-4)
    assert run.fingerprint["compile"] == "inductor"
    assert run.time(warmup_s=0.02, blocks=3).median_ms > 0
