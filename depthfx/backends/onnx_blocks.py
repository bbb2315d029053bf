"""Tiny ONNX graphs of one merged conv block (+ its activation), built directly.

The latency table times hundreds of merged convs; exporting each through torch would cost
about a second apiece. These graphs are built with ``onnx.helper`` in milliseconds and are
node-for-node what ``depthfx.export`` (the dynamo exporter, opset 20, onnxscript optimiser)
emits for ``nn.Sequential([nn.ZeroPad2d,] nn.Conv2d, act)`` — same op types, attributes and
opset — so ONNX Runtime and TensorRT fuse them exactly as they fuse the exported model
(tests/backends/test_onnx_blocks.py checks this per activation).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from depthfx.errors import DepthFXError
from depthfx.export import DEFAULT_OPSET, IR_VERSION

#: Canonical activation names and their default parameters (torch's defaults).
ACTIVATIONS: dict[str, tuple[float | str, ...]] = {
    "relu": (),
    "relu6": (),
    "hardtanh": (-1.0, 1.0),
    "silu": (),
    "hardswish": (),
    "gelu": ("none",),
    "leaky_relu": (0.01,),
    "mish": (),
    "elu": (1.0,),
    "sigmoid": (),
}

#: An activation: None, a canonical name, or a name with parameters such as
#: ``("hardtanh", min, max)``, ``("leaky_relu", slope)``, ``("elu", alpha)``, ``("gelu", "tanh")``.
ActivationSpec = str | tuple[str | float, ...] | None


def _pair(v: int | Sequence[int], what: str) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    if len(v) != 2:
        raise DepthFXError(f"{what} must be an int or a pair, got {v!r}")
    return int(v[0]), int(v[1])


def onnx_pads(pads: int | Sequence[int]) -> tuple[int, int, int, int]:
    """Per-side pads in ONNX order (top, left, bottom, right) from an int, a symmetric
    (pad_h, pad_w) pair or an explicit 4-tuple (already in ONNX order)."""
    if isinstance(pads, int):
        return pads, pads, pads, pads
    if len(pads) == 2:
        return pads[0], pads[1], pads[0], pads[1]
    if len(pads) == 4:
        top, left, bottom, right = (int(p) for p in pads)
        return top, left, bottom, right
    raise DepthFXError(
        f"pads must be an int, (pad_h, pad_w) or (top, left, bottom, right): {pads!r}"
    )


def _activation(spec: ActivationSpec) -> tuple[str, tuple[float | str, ...]] | None:
    if spec is None:
        return None
    name, *params = (spec,) if isinstance(spec, str) else spec
    if name not in ACTIVATIONS:
        raise DepthFXError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")
    defaults = ACTIVATIONS[str(name)]
    if len(params) > len(defaults):
        raise DepthFXError(f"activation {name!r} takes at most {len(defaults)} parameters")
    return str(name), (*params, *defaults[len(params) :])


def _activation_nodes(
    name: str, params: tuple[float | str, ...], x: str, out: str
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The nodes the dynamo exporter emits for each activation (opset 20, after optimisation)."""
    simple = {"relu": "Relu", "hardswish": "HardSwish", "mish": "Mish", "sigmoid": "Sigmoid"}
    if name in simple:
        return [helper.make_node(simple[name], [x], [out])], []
    if name in ("relu6", "hardtanh"):
        lo, hi = (0.0, 6.0) if name == "relu6" else (float(params[0]), float(params[1]))
        inits = [
            numpy_helper.from_array(np.array(lo, np.float32), "clip_min"),
            numpy_helper.from_array(np.array(hi, np.float32), "clip_max"),
        ]
        return [helper.make_node("Clip", [x, "clip_min", "clip_max"], [out])], inits
    if name == "silu":
        return [
            helper.make_node("Sigmoid", [x], ["silu_sigmoid"]),
            helper.make_node("Mul", [x, "silu_sigmoid"], [out]),
        ], []
    if name == "gelu":
        return [helper.make_node("Gelu", [x], [out], approximate=str(params[0]))], []
    if name == "leaky_relu":
        return [helper.make_node("LeakyRelu", [x], [out], alpha=float(params[0]))], []
    # elu
    return [helper.make_node("Elu", [x], [out], alpha=float(params[0]))], []


def conv_output_hw(
    input_hw: Sequence[int],
    kernel_size: int | Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    pads: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
) -> tuple[int, int]:
    """Spatial output size of a conv (the formula ONNX and torch share)."""
    (kh, kw), (sh, sw), (dh, dw) = (
        _pair(kernel_size, "kernel_size"),
        _pair(stride, "stride"),
        _pair(dilation, "dilation"),
    )
    top, left, bottom, right = onnx_pads(pads)
    h = (input_hw[0] + top + bottom - dh * (kh - 1) - 1) // sh + 1
    w = (input_hw[1] + left + right - dw * (kw - 1) - 1) // sw + 1
    if h < 1 or w < 1:
        raise DepthFXError(f"conv output would be empty ({h}×{w}) for input {tuple(input_hw)}")
    return h, w


def conv_block_model(
    in_channels: int,
    out_channels: int,
    kernel_size: int | Sequence[int],
    input_hw: Sequence[int],
    *,
    batch: int | str = 1,
    stride: int | Sequence[int] = 1,
    pads: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    activation: ActivationSpec = None,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    seed: int = 0,
) -> onnx.ModelProto:
    """ONNX model ``input (batch, C, H, W) → Conv(+bias) → activation → output``.

    ``pads`` as in :func:`onnx_pads`; ``batch`` may be a name for a dynamic batch. Weights
    default to seeded He-scaled normals (values do not change latency; NaN/denormal-free).
    """
    (kh, kw) = _pair(kernel_size, "kernel_size")
    if in_channels % groups or out_channels % groups:
        raise DepthFXError(
            f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}"
        )
    h_out, w_out = conv_output_hw(input_hw, (kh, kw), stride=stride, pads=pads, dilation=dilation)
    w_shape = (out_channels, in_channels // groups, kh, kw)
    rng = np.random.default_rng(seed)
    if weight is None:
        fan_in = w_shape[1] * kh * kw
        weight = rng.standard_normal(w_shape, dtype=np.float32) * np.float32((2.0 / fan_in) ** 0.5)
    if bias is None:
        bias = rng.standard_normal(out_channels, dtype=np.float32) * np.float32(0.1)
    if tuple(weight.shape) != w_shape or tuple(bias.shape) != (out_channels,):
        raise DepthFXError(
            f"weight/bias shapes {weight.shape}/{bias.shape} != "
            f"expected {w_shape}/({out_channels},)"
        )
    act = _activation(activation)
    conv_out = "output" if act is None else "conv"
    nodes = [
        helper.make_node(
            "Conv",
            ["input", "weight", "bias"],
            [conv_out],
            group=groups,
            pads=list(onnx_pads(pads)),
            auto_pad="NOTSET",
            strides=list(_pair(stride, "stride")),
            dilations=list(_pair(dilation, "dilation")),
            kernel_shape=[kh, kw],
        )
    ]
    inits = [
        numpy_helper.from_array(np.asarray(weight, np.float32), "weight"),
        numpy_helper.from_array(np.asarray(bias, np.float32), "bias"),
    ]
    if act is not None:
        act_nodes, act_inits = _activation_nodes(*act, conv_out, "output")
        nodes += act_nodes
        inits += act_inits
    graph = helper.make_graph(
        nodes,
        "conv_block",
        [
            helper.make_tensor_value_info(
                "input", TensorProto.FLOAT, [batch, in_channels, *input_hw]
            )
        ],
        [
            helper.make_tensor_value_info(
                "output", TensorProto.FLOAT, [batch, out_channels, h_out, w_out]
            )
        ],
        inits,
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", DEFAULT_OPSET)],
        ir_version=IR_VERSION,
        producer_name="depthfx.onnx_blocks",
    )
