"""The ``callable`` importance method: any user score ``f(prepared_model) -> float``.

``measure_importance(..., method=f)`` runs it: per entry ``f`` of the entry's prepared network,
as returned (the table's ``score`` column), cached and sharded like ``finetune`` by
:func:`~depthfx.measure.importance.experiments.run_experiments`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from torch import fx

from depthfx.errors import DepthFXError
from depthfx.measure.importance.experiments import Experiment, run_experiments
from depthfx.measure.importance.methods import (
    ImportanceRequest,
    ImportanceResult,
    register_importance_method,
)
from depthfx.records import Chain
from depthfx.solver import ImportanceKey


@register_importance_method("callable", norm="none", alpha=1.0, per_entry=True)
def callable_importance(request: ImportanceRequest) -> ImportanceResult:
    """Score every entry with ``request.function``."""
    if request.function is None:
        raise DepthFXError("method 'callable' scores with a function: pass it as method=f")
    r = request
    return run_experiments(
        r.model, r.analysis, r.keys, callable_experiment(r.function), r.merges, r.merge_id,
        cache=r.cache, progress=r.progress, executor=r.executor,
        executor_options=r.executor_options,
    )  # fmt: skip


def callable_experiment(fn: Callable[[fx.GraphModule], float]) -> Experiment:
    """Score = fn(entry's prepared network), as returned. Module-level functions bound with
    ``functools.partial``, so it pickles when ``fn`` does (executor ``processes``)."""
    name = getattr(fn, "__qualname__", type(fn).__name__)
    settings = {"method": "callable", "function": f"{getattr(fn, '__module__', '')}.{name}"}
    return Experiment("callable", ("score",), "score", _no_base, partial(_score, fn), settings)


def _no_base(net: fx.GraphModule) -> dict[str, Any]:
    return {}


def _score(
    fn: Callable[[fx.GraphModule], float],
    net: fx.GraphModule,
    chain: Chain,
    key: ImportanceKey,
    ref: dict[str, Any],
) -> list[float]:
    return [float(fn(net))]


__all__ = ["callable_experiment", "callable_importance"]
