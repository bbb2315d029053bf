"""Capture: trace a model into a ``torch.fx.GraphModule`` with a leaf policy and shapes.

Why a custom tracer (ecosystem notes §1.2, §1.4): plain ``symbolic_trace`` fails on timm
layers that branch on runtime sizes (``Conv2dSame``, ``ConvMlp``) and traces through timm's
``BatchNormAct2d``, baking ``training`` into ``F.batch_norm``. Keeping torch.nn classes,
timm's no-trace registry and :func:`depthfx.register_leaf` classes as leaves gives one
``call_module`` node per layer call — with the module's qualified name as target, so the
state_dict keys stay those of the original — and keeps mode switching inside leaves alive.
Code that is traced through is specialised on ``self.training``, so we trace in the mode
the graph will run in.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from depthfx import patterns
from depthfx.errors import CaptureError

_CONTROL_FLOW = "symbolically traced variables cannot be used as inputs to control flow"


class LeafTracer(fx.Tracer):
    """An ``fx.Tracer`` whose leaves are torch.nn/torch.ao.nn classes (not Sequential), timm's
    no-trace modules and registered leaves; it remembers the innermost module whose forward
    raised, for the error message."""

    def __init__(
        self,
        leaves: Sequence[type[nn.Module]] = (),
        autowrap_functions: Sequence[Callable[..., Any]] = (),
    ) -> None:
        super().__init__(autowrap_functions=tuple(autowrap_functions))
        self.leaves = tuple(leaves)
        self.failed_module: tuple[str, nn.Module] | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, self.leaves) or super().is_leaf_module(m, module_qualified_name)

    def call_module(
        self,
        m: nn.Module,
        forward: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_module is None:  # the innermost frame records first
                self.failed_module = (self.path_of_module(m), m)
            raise


def _timm_registry() -> tuple[list[type[nn.Module]], list[Callable[..., Any]]]:
    try:
        from timm.layers import get_notrace_functions, get_notrace_modules
    except ImportError:
        return [], []
    return list(get_notrace_modules()), list(get_notrace_functions())


def _as_tuple(example_inputs: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    return tuple(example_inputs)


def _suggestion(qualname: str, module: nn.Module, err: Exception) -> str:
    cls = type(module)
    if not qualname:
        return (
            "the failing code is in the root forward, which cannot be a leaf; move it into a "
            "submodule and register that with depthfx.register_leaf"
        )
    if _CONTROL_FLOW in str(err) or isinstance(err, fx.proxy.TraceError):
        return (
            f"its forward depends on tensor values or sizes; register it as a leaf with "
            f"depthfx.register_leaf({cls.__module__}.{cls.__qualname__})"
        )
    return (
        f"make its forward traceable by torch.fx, or register it as a leaf with "
        f"depthfx.register_leaf({cls.__module__}.{cls.__qualname__})"
    )


def capture(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    training: bool | None = None,
) -> fx.GraphModule:
    """Trace ``model`` in ``training`` mode (default: its current mode) and annotate every
    node with ``meta["tensor_meta"]`` from the example inputs.

    The GraphModule shares its submodules and parameters with ``model`` (same qualified
    names and state_dict keys). Every module's mode flag is restored afterwards; the traced
    mode is in ``gm.meta["depthfx_training"]``. Raises :class:`CaptureError` naming the
    innermost module whose forward could not be traced, the reason and a fix.
    """
    patterns.load_defaults()
    inputs = _as_tuple(example_inputs)
    mode = model.training if training is None else training
    saved_modes = {m: m.training for m in model.modules()}
    timm_leaves, timm_functions = _timm_registry()
    tracer = LeafTracer(
        leaves=[*timm_leaves, *patterns.LEAF_MODULES], autowrap_functions=timm_functions
    )
    try:
        if training is not None:  # else keep per-module flags (e.g. frozen BN in a train model)
            model.train(training)
        try:
            graph = tracer.trace(model)
        except Exception as err:
            qualname, module = tracer.failed_module or ("", model)
            where = f"{qualname or '<root>'} ({type(module).__qualname__})"
            raise CaptureError(
                f"cannot trace {where}: {type(err).__name__}: {err}; "
                f"{_suggestion(qualname, module, err)}"
            ) from err
        name = type(model).__name__
        gm = fx.GraphModule(tracer.root, graph, name)
        _propagate_shapes(gm, inputs)
    finally:
        for m, flag in saved_modes.items():
            m.training = flag
    gm.meta["depthfx_training"] = mode
    gm.training = mode  # the root is new; its children keep their restored flags
    return gm


class _ShapeProp(ShapeProp):
    """``ShapeProp`` that remembers the node it is running, for the error message."""

    current: fx.Node | None = None

    def run_node(self, n: fx.Node) -> Any:
        self.current = n
        return super().run_node(n)


def _propagate_shapes(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> None:
    """Run ``ShapeProp`` without side effects: in eval mode (shapes do not depend on the mode,
    and batch-1 BN in train mode would fail) and with every buffer restored afterwards (a
    traced-through train-mode ``F.batch_norm`` would update running statistics)."""
    buffers = {name: buf.clone() for name, buf in gm.named_buffers()}
    gm.eval()
    prop = _ShapeProp(gm)
    try:
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            prop.propagate(*inputs)
    except Exception as err:
        cause = err.__cause__ or err  # ShapeProp wraps the real error and prints a traceback
        node = prop.current
        where = f" at {node.name} ({node.op} {node.target})" if node is not None else ""
        raise CaptureError(
            f"shape propagation failed{where}: {type(cause).__name__}: {cause}; check that "
            "example_inputs have a shape and dtype the model accepts"
        ) from err
    finally:
        with torch.no_grad():
            for name, value in buffers.items():
                gm.get_buffer(name).copy_(value)
