"""Registries of the ops the chain finder recognises; they are depthfx's extension points.

An op reaches an fx graph in one of three spellings (ecosystem notes §1.3): a ``call_module``
of a module class, a ``call_function`` of a callable, or a ``call_method`` by name. Each
registry below maps all three to one canonical meaning, the way torch.ao's ``_is_match``
does. Module classes are looked up along the MRO but only match when the subclass keeps the
registered class's ``forward`` — a subclass that overrides it (timm ``StdConv2d``, a custom
BN) computes something else and must not be mistaken for the base op.

Defaults cover torch.nn, torchvision.ops and timm (registered lazily so that importing
depthfx does not import timm). Users extend them with :func:`register_activation`,
:func:`register_leaf`, :func:`register_batchnorm` and :func:`register_transparent`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Target = type[nn.Module] | Callable[..., Any] | str

#: Parameters of each canonical activation, in the positional order of its functional form,
#: with defaults. ``inplace`` is never recorded: a rebuilt activation is always out-of-place.
ACTIVATION_PARAMS: dict[str, tuple[tuple[str, Any], ...]] = {
    "relu": (),
    "relu6": (),
    "hardtanh": (("min_val", -1.0), ("max_val", 1.0)),
    "leaky_relu": (("negative_slope", 0.01),),
    "elu": (("alpha", 1.0),),
    "celu": (("alpha", 1.0),),
    "selu": (),
    "gelu": (("approximate", "none"),),
    "silu": (),
    "hardswish": (),
    "mish": (),
    "sigmoid": (),
    "hardsigmoid": (),
    "tanh": (),
    "softplus": (("beta", 1.0), ("threshold", 20.0)),
    "prelu": (),
}

#: How to build a fresh out-of-place module for a canonical activation and its parameters.
ACTIVATION_FACTORIES: dict[str, Callable[..., nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "hardtanh": nn.Hardtanh,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "celu": nn.CELU,
    "selu": nn.SELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "hardswish": nn.Hardswish,
    "mish": nn.Mish,
    "sigmoid": nn.Sigmoid,
    "hardsigmoid": nn.Hardsigmoid,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "prelu": nn.PReLU,
}

ACTIVATION_MODULES: dict[type[nn.Module], str] = {
    nn.ReLU: "relu",
    nn.ReLU6: "relu6",
    nn.Hardtanh: "hardtanh",
    nn.LeakyReLU: "leaky_relu",
    nn.ELU: "elu",
    nn.CELU: "celu",
    nn.SELU: "selu",
    nn.GELU: "gelu",
    nn.SiLU: "silu",
    nn.Hardswish: "hardswish",
    nn.Mish: "mish",
    nn.Sigmoid: "sigmoid",
    nn.Hardsigmoid: "hardsigmoid",
    nn.Tanh: "tanh",
    nn.Softplus: "softplus",
    nn.PReLU: "prelu",
}

ACTIVATION_FUNCTIONS: dict[Callable[..., Any], str] = {
    F.relu: "relu",
    F.relu_: "relu",
    torch.relu: "relu",
    torch.relu_: "relu",
    F.relu6: "relu6",
    F.hardtanh: "hardtanh",
    F.hardtanh_: "hardtanh",
    F.leaky_relu: "leaky_relu",
    F.leaky_relu_: "leaky_relu",
    F.elu: "elu",
    F.elu_: "elu",
    F.celu: "celu",
    F.selu: "selu",
    torch.selu: "selu",
    F.gelu: "gelu",
    F.silu: "silu",
    F.hardswish: "hardswish",
    F.mish: "mish",
    torch.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid",
    F.hardsigmoid: "hardsigmoid",
    torch.tanh: "tanh",
    F.tanh: "tanh",
    F.softplus: "softplus",
}

ACTIVATION_METHODS: dict[str, str] = {
    "relu": "relu",
    "relu_": "relu",
    "sigmoid": "sigmoid",
    "sigmoid_": "sigmoid",
    "tanh": "tanh",
    "tanh_": "tanh",
}

#: BatchNorm-like modules that fold into the preceding conv in eval mode: they expose
#: ``weight``, ``bias``, ``running_mean``, ``running_var`` and ``eps``.
BATCHNORM_MODULES: set[type[nn.Module]] = {nn.BatchNorm2d, nn.SyncBatchNorm}

#: BN modules that also apply ``self.drop`` and ``self.act`` in their forward (timm norm_act);
#: replacing their activation means replacing the ``act`` submodule.
NORM_ACT_MODULES: set[type[nn.Module]] = set()

#: Identity at inference (dropout, stochastic depth, DropPath): kept inside a chain.
TRANSPARENT_MODULES: set[type[nn.Module]] = {
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
}
TRANSPARENT_FUNCTIONS: set[Callable[..., Any]] = {F.dropout, F.dropout2d, F.alpha_dropout}

#: Plain 2-d convolutions whose effective padding is static (``padding`` attribute) or
#: "dynamic same" (computed from the input size, timm ``Conv2dSame``).
CONV_MODULES: dict[type[nn.Module], str] = {nn.Conv2d: "conv2d"}

#: Residual adds: ``out += identity`` traces as ``operator.add`` (a Proxy has no ``__iadd__``).
ADD_FUNCTIONS: set[Callable[..., Any]] = {operator.add, operator.iadd, torch.add}
ADD_METHODS: set[str] = {"add", "add_"}

PAD_FUNCTIONS: set[Callable[..., Any]] = {F.pad}

#: Extra tracer leaves besides torch.nn / torch.ao.nn classes and timm's no-trace registry.
LEAF_MODULES: set[type[nn.Module]] = set()

_defaults_loaded = False


def register_leaf(cls: type[nn.Module]) -> type[nn.Module]:
    """Keep ``cls`` as one ``call_module`` node instead of tracing through its forward.

    Use it for modules with data-dependent control flow; usable as a class decorator.
    """
    LEAF_MODULES.add(cls)
    return cls


def register_activation(target: Target, op: str) -> None:
    """Teach depthfx that ``target`` (module class, function, or method name) is activation ``op``.

    ``op`` is a canonical name from :data:`ACTIVATION_PARAMS`; a registered module class is
    also made a tracer leaf so that its call site stays one node.
    """
    if op not in ACTIVATION_FACTORIES:
        raise ValueError(f"unknown activation {op!r}; known: {sorted(ACTIVATION_FACTORIES)}")
    if isinstance(target, str):
        ACTIVATION_METHODS[target] = op
    elif isinstance(target, type):
        ACTIVATION_MODULES[target] = op
        LEAF_MODULES.add(target)
    else:
        ACTIVATION_FUNCTIONS[target] = op


def register_batchnorm(cls: type[nn.Module], *, norm_act: bool = False) -> None:
    """Register a foldable BN module class; ``norm_act``: it also applies ``.drop``, ``.act``."""
    (NORM_ACT_MODULES if norm_act else BATCHNORM_MODULES).add(cls)
    LEAF_MODULES.add(cls)


def register_transparent(target: type[nn.Module] | Callable[..., Any]) -> None:
    """Register an op that is the identity at inference (a dropout variant) as transparent."""
    if isinstance(target, type):
        TRANSPARENT_MODULES.add(target)
        LEAF_MODULES.add(target)
    else:
        TRANSPARENT_FUNCTIONS.add(target)


def load_defaults() -> None:
    """Register torchvision's and timm's layers (once; timm is optional)."""
    global _defaults_loaded
    if _defaults_loaded:
        return
    _defaults_loaded = True
    import torchvision.ops

    register_transparent(torchvision.ops.StochasticDepth)
    TRANSPARENT_FUNCTIONS.add(torchvision.ops.stochastic_depth)
    register_batchnorm(torchvision.ops.FrozenBatchNorm2d)
    try:
        import timm.layers as tl
    except ImportError:
        return
    from timm.layers import activations as ta
    from timm.layers import activations_me as tme

    for cls, op in (
        (ta.Swish, "silu"),
        (ta.Mish, "mish"),
        (ta.HardSwish, "hardswish"),
        (ta.HardSigmoid, "hardsigmoid"),
        (ta.Sigmoid, "sigmoid"),
        (ta.Tanh, "tanh"),
        (ta.GELU, "gelu"),
        (ta.PReLU, "prelu"),
        (tme.SwishMe, "silu"),
        (tme.MishMe, "mish"),
        (tme.HardSwishMe, "hardswish"),
        (tme.HardSigmoidMe, "hardsigmoid"),
    ):
        register_activation(cls, op)
    ACTIVATION_FUNCTIONS.update(
        {
            ta.swish: "silu",
            ta.mish: "mish",
            ta.hard_swish: "hardswish",
            ta.hard_sigmoid: "hardsigmoid",
            ta.sigmoid: "sigmoid",
            ta.tanh: "tanh",
        }
    )
    register_transparent(tl.DropPath)
    for cls in (tl.BatchNormAct2d, tl.FrozenBatchNormAct2d, tl.SyncBatchNormAct):
        register_batchnorm(cls, norm_act=True)
    CONV_MODULES[tl.Conv2dSame] = "conv2d_same"
    LEAF_MODULES.add(tl.Conv2dSame)


def lookup_class(registry: dict[type, Any] | set[type], cls: type) -> Any:
    """The registry entry of the nearest registered base of ``cls`` that ``cls`` does not
    override ``forward`` of; ``None`` when there is none (sets return the base class)."""
    for base in cls.__mro__:
        if base in registry:
            if cls.forward is not base.forward:
                return None
            return registry[base] if isinstance(registry, dict) else base
    return None


def activation_params(op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Parameters of a functional/method activation call (``args`` excludes the input)."""
    spec = ACTIVATION_PARAMS[op]
    params = {name: default for name, default in spec}
    for (name, _), value in zip(spec, args, strict=False):
        params[name] = value
    params.update((k, v) for k, v in kwargs.items() if k in params)
    return params


def module_activation_params(op: str, module: nn.Module) -> dict[str, Any]:
    """Parameters of an activation module, read from its attributes (defaults if absent)."""
    return {name: getattr(module, name, default) for name, default in ACTIVATION_PARAMS[op]}


def make_activation(op: str, params: dict[str, Any]) -> nn.Module:
    """A fresh, out-of-place activation module equivalent to ``op`` with ``params``."""
    return ACTIVATION_FACTORIES[op](**params)
