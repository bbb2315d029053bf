"""The ``depthfx`` torch.compile backend: apply a fine-tuned plan to dynamo's captured graph.

``torch.compile(prepared, backend="depthfx", options={"plan": plan, "backend": "inductor"})``
(registered through the ``torch_dynamo_backends`` entry point) receives each graph dynamo
captures, with parameters and buffers as inputs holding the real (frozen) tensors. The plan's
groups are merged in it (``depthfx.dynamo.rewrite``); the rewritten graph is then run against
the captured one on the example inputs (``compare_outputs``: ``MergeMismatch`` beyond
tolerance) and handed to the delegate backend.

The backend is inference-only: it refuses graphs with grad enabled on parameters that require
grad and BatchNorm in training mode, because the folded weights are frozen copies.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx

from depthfx.dynamo.maps import call_arg
from depthfx.dynamo.rewrite import rewrite
from depthfx.errors import DepthFXError
from depthfx.passes.verify import compare_outputs
from depthfx.plans import Plan, PlanError

logger = logging.getLogger(__name__)

_OPTIONS = {"plan", "backend", "backend_options", "check", "rtol", "atol"}


def backend(
    gm: fx.GraphModule,
    example_inputs: Sequence[Any],
    *,
    options: dict[str, Any] | None = None,
) -> Callable[..., Any]:
    """torch.compile backend: merge the plan's groups in ``gm``, verify, then delegate.

    ``options``: ``plan`` (Plan, its JSON dict, or a path to its JSON file; required),
    ``backend`` (delegate, default ``"inductor"``), ``backend_options`` (passed to the delegate
    as ``options=``), ``check`` (default True), ``rtol``/``atol`` (1e-4/1e-5, as ``convert``).
    """
    options = dict(options or {})
    if unknown := set(options) - _OPTIONS:
        raise DepthFXError(f"depthfx backend: unknown options {sorted(unknown)}; known {_OPTIONS}")
    if "plan" not in options:
        raise DepthFXError(
            'the depthfx backend needs a plan: torch.compile(model, backend="depthfx", '
            'options={"plan": plan, "backend": "inductor"})'
        )
    plan = _load_plan(options["plan"])
    delegate_name = str(options.get("backend", "inductor"))
    if delegate_name == "depthfx":
        raise DepthFXError('options["backend"] names the backend to delegate to; not "depthfx"')
    _refuse_training(gm, example_inputs)
    rewritten, report = rewrite(gm, example_inputs, plan)
    if report.merged and options.get("check", True):
        compare_outputs(
            gm,
            rewritten,
            example_inputs,
            rtol=float(options.get("rtol", 1e-4)),
            atol=float(options.get("atol", 1e-5)),
            what="captured graph output",
        )
    logger.info(
        "depthfx: %d groups merged, convs %d -> %d, delegating to %r",
        len(report.merged),
        report.convs_before,
        report.convs_after,
        delegate_name,
    )
    from torch._dynamo.backends.registry import lookup_backend

    delegate = lookup_backend(delegate_name)
    if "backend_options" in options:
        return delegate(rewritten, list(example_inputs), options=options["backend_options"])
    return delegate(rewritten, list(example_inputs))


def _load_plan(value: Any) -> Plan:
    if isinstance(value, Plan):
        return value
    if isinstance(value, dict):
        return Plan.from_json(value)
    if isinstance(value, str | os.PathLike):
        return Plan.load(value)
    raise PlanError(
        f'options["plan"] must be a depthfx Plan, its JSON dict or a path, not {value!r}'
    )


def _refuse_training(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> None:
    if torch.is_grad_enabled() and any(
        isinstance(t, Tensor) and t.requires_grad for t in example_inputs
    ):
        raise DepthFXError(
            "the depthfx backend is inference-only (it folds frozen copies of the weights): "
            "call the compiled model under torch.no_grad() or torch.inference_mode(), or "
            "freeze the parameters with model.requires_grad_(False); fine-tune the module "
            "returned by depthfx.prepare() without this backend"
        )
    for node in gm.graph.nodes:
        if (
            node.op == "call_function"
            and node.target is F.batch_norm
            and call_arg(node, 5, "training")
        ):
            raise DepthFXError(
                f"the depthfx backend is inference-only: BatchNorm {node.name!r} runs in "
                "training mode; call model.eval() before compiling"
            )


__all__ = ["backend"]
