"""The registry of importance methods: ``measure_importance(method=name)`` runs the method
registered under ``name``.

A method is a function ``run(request: ImportanceRequest) -> ImportanceResult`` decorated with
``@register_importance_method(name, norm=..., alpha=...)``; ``norm`` and ``alpha`` are the
table's defaults for it (the caller's ``norm``/``alpha`` win). ``measure_importance`` does the
rest for every method alike (entries, shards, threads, the table and its fingerprint), so a new
method is one new module of this package, imported by the package ``__init__`` (the import is
what registers it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import fx, nn

from depthfx.errors import DepthFXError
from depthfx.io import PathLike
from depthfx.measure.importance.entries import MergeRule
from depthfx.records import Analysis
from depthfx.solver import ImportanceKey, Norm


@dataclass(frozen=True)
class ImportanceRequest:
    """What a method scores and with which options: ``measure_importance``'s arguments (see
    there), resolved. ``keys``: the entries to score (this shard's); ``merges``: the merge rule
    of the entry networks (None: the paper's S = A) and ``merge_id`` its name; ``model_id``:
    :func:`~depthfx.measure.importance.digests.model_hash` of ``model``; ``function``: the
    user's score of the ``callable`` method; ``bn_recalibration``: the proxy's BN re-estimation
    (True, ``"one-pass"``; None: the method's default); ``executor``/``executor_options``:
    where a per-entry method runs its entries (:mod:`depthfx.executors`)."""

    model: nn.Module
    analysis: Analysis
    keys: list[ImportanceKey]
    merges: MergeRule | None
    merge_id: str | None
    model_id: str
    function: Callable[[fx.GraphModule], float] | None
    data: Any
    train_data: Any
    val_data: Any
    score: str
    estimate: str
    bn_recalibration: bool | str | None
    images: int | None
    batch_size: int | None
    epochs: float
    steps: int | None
    lr: float
    train_metrics: bool
    cache: PathLike | None
    seed: int
    progress: bool
    executor: str = "serial"
    executor_options: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class ImportanceResult:
    """One method's measurement. ``scores``: the table's score per entry (``columns[0]``);
    ``metrics``: every metric per entry, in the order of ``columns`` (the raw CSV's metric
    columns); ``meta``: at least ``method`` and the ``fingerprint`` of the settings."""

    scores: dict[ImportanceKey, float]
    columns: list[str]
    metrics: dict[ImportanceKey, list[float]]
    meta: dict[str, Any]


#: A method's function.
MethodRun = Callable[[ImportanceRequest], ImportanceResult]


@dataclass(frozen=True)
class ImportanceMethod:
    """A registered method: ``run``, the table's default ``norm`` and ``alpha`` for it, and
    ``per_entry``: it runs one independent job per entry, so any executor may run them."""

    name: str
    run: MethodRun
    norm: Norm
    alpha: float
    per_entry: bool = False


#: The registered methods by name.
IMPORTANCE_METHODS: dict[str, ImportanceMethod] = {}


def register_importance_method(
    name: str, *, norm: Norm = "none", alpha: float = 1.0, per_entry: bool = False
) -> Callable[[MethodRun], MethodRun]:
    """Decorator: register ``run`` as the importance method ``name`` (a name is registered
    once: a second registration is an error, not a silent replacement)."""

    def register(run: MethodRun) -> MethodRun:
        if name in IMPORTANCE_METHODS:
            raise DepthFXError(f"importance method {name!r} is already registered")
        IMPORTANCE_METHODS[name] = ImportanceMethod(name, run, norm, alpha, per_entry)
        return run

    return register


def importance_method(name: Any) -> ImportanceMethod:
    """The method registered as ``name``; an error naming the registered ones otherwise."""
    if not isinstance(name, str) or name not in IMPORTANCE_METHODS:
        names = ", ".join(repr(n) for n in sorted(IMPORTANCE_METHODS))
        raise DepthFXError(
            f"unknown method {name!r}: use one of {names} or a callable f(prepared) -> float"
        )
    return IMPORTANCE_METHODS[name]


__all__ = [
    "IMPORTANCE_METHODS",
    "ImportanceMethod",
    "ImportanceRequest",
    "ImportanceResult",
    "MethodRun",
    "importance_method",
    "register_importance_method",
]
