"""The hand-built conv-block graphs equal what depthfx.export emits for Sequential(conv, act)."""

from __future__ import annotations

import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from depthfx.backends.onnx_blocks import ACTIVATIONS, conv_block_model, onnx_pads
from depthfx.errors import DepthFXError
from depthfx.export import DEFAULT_OPSET, to_onnx_model

TORCH_ACTS: dict[str, tuple[object, nn.Module]] = {
    "relu": ("relu", nn.ReLU()),
    "relu6": ("relu6", nn.ReLU6()),
    "hardtanh": (("hardtanh", -2.0, 3.0), nn.Hardtanh(-2.0, 3.0)),
    "silu": ("silu", nn.SiLU()),
    "hardswish": ("hardswish", nn.Hardswish()),
    "gelu": ("gelu", nn.GELU()),
    "gelu_tanh": (("gelu", "tanh"), nn.GELU(approximate="tanh")),
    "leaky_relu": (("leaky_relu", 0.2), nn.LeakyReLU(0.2)),
    "mish": ("mish", nn.Mish()),
    "elu": ("elu", nn.ELU()),
    "sigmoid": ("sigmoid", nn.Sigmoid()),
    "none": (None, nn.Identity()),
}

# (in, out, kernel, stride, pads (top, left, bottom, right), groups): one conv geometry per
# activation so every case below is covered without one export per combination.
GEOMETRIES = [
    (4, 8, (3, 3), 1, (1, 1, 1, 1), 1),
    (4, 8, (3, 2), 2, (2, 0, 1, 1), 2),  # asymmetric pads, non-square kernel, stride 2, groups
    (6, 6, (3, 3), 1, (1, 1, 1, 1), 6),  # depthwise
    (4, 6, (5, 5), 2, (2, 2, 2, 2), 1),  # stride 2
    (4, 4, (1, 1), 1, (0, 0, 0, 0), 1),
    (4, 8, (7, 1), 1, (3, 0, 3, 0), 2),
]


def _torch_block(
    cin: int, cout: int, k: tuple[int, int], s: int, pads: tuple, g: int, act: nn.Module
):
    top, left, bottom, right = pads
    conv = nn.Conv2d(cin, cout, k, stride=s, groups=g, bias=True)
    layers: list[nn.Module] = []
    if (top, left) == (bottom, right):
        conv.padding = (top, left)
    else:
        layers.append(nn.ZeroPad2d((left, right, top, bottom)))
    return nn.Sequential(*layers, conv, act).eval(), conv


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _attrs(model: onnx.ModelProto, op: str) -> dict[str, object]:
    node = next(n for n in model.graph.node if n.op_type == op)
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("act_name", list(TORCH_ACTS))
def test_block_equals_dynamo_export(act_name: str) -> None:
    spec, act = TORCH_ACTS[act_name]
    cin, cout, k, s, pads, g = GEOMETRIES[list(TORCH_ACTS).index(act_name) % len(GEOMETRIES)]
    torch.manual_seed(0)
    module, conv = _torch_block(cin, cout, k, s, pads, g, act)
    x = torch.randn(2, cin, 11, 10)
    exported = to_onnx_model(module, (x,), dynamic_batch=False)
    tiny = conv_block_model(
        cin,
        cout,
        k,
        (11, 10),
        batch=2,
        stride=s,
        pads=pads,
        groups=g,
        activation=spec,  # type: ignore[arg-type]
        weight=conv.weight.detach().numpy(),
        bias=conv.bias.detach().numpy(),
    )
    onnx.checker.check_model(tiny, full_check=True)
    assert _ops(tiny) == _ops(exported)
    assert [o.version for o in tiny.opset_import if o.domain == ""] == [DEFAULT_OPSET]
    assert {o.version for o in exported.opset_import if o.domain == ""} == {DEFAULT_OPSET}
    assert _attrs(tiny, "Conv") == _attrs(exported, "Conv")
    for op in ("Gelu", "LeakyRelu", "Elu"):
        if op in _ops(exported):
            assert _attrs(tiny, op) == _attrs(exported, op)
    want = module(x).detach().numpy()
    got = _run(tiny, x.numpy())
    assert got.shape == want.shape
    np.testing.assert_allclose(got, _run(exported, x.numpy()), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_every_canonical_activation_is_covered() -> None:
    covered = {s if isinstance(s, str) else s[0] for s, _ in TORCH_ACTS.values() if s}
    assert covered == set(ACTIVATIONS)


def test_building_is_fast_and_dynamic_batch() -> None:
    t0 = time.perf_counter()
    for i in range(50):
        model = conv_block_model(64, 64, 3, (28, 28), pads=1, activation="relu", seed=i)
    assert time.perf_counter() - t0 < 5.0  # ~ms each; a torch export is ~1 s
    dyn = conv_block_model(8, 16, 3, (9, 9), batch="N", stride=2, pads=1, activation="silu")
    out = _run(dyn, np.ones((3, 8, 9, 9), np.float32))
    assert out.shape == (3, 16, 5, 5)
    assert model.graph.output[0].type.tensor_type.shape.dim[2].dim_value == 28


def test_bad_arguments_raise() -> None:
    assert onnx_pads(1) == (1, 1, 1, 1)
    assert onnx_pads((1, 2)) == (1, 2, 1, 2)
    with pytest.raises(DepthFXError, match="unknown activation"):
        conv_block_model(4, 4, 3, (8, 8), activation="swish")
    with pytest.raises(DepthFXError, match="groups"):
        conv_block_model(4, 6, 3, (8, 8), groups=4)
    with pytest.raises(DepthFXError, match="empty"):
        conv_block_model(4, 4, 5, (2, 2))
    with pytest.raises(DepthFXError, match="pads"):
        conv_block_model(4, 4, 3, (8, 8), pads=(1, 2, 3))
