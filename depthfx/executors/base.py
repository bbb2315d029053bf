"""What every executor does: run one independent job per key and hand each result back as soon
as it arrives, so that the caller can store it (a cache file) before the next one is done.

A job is a module-level function ``job(shared, item, device) -> result``: ``shared`` is the same
object for every job (a model and its data), sent to each worker once instead of once per job;
``item`` is the job's own small argument; ``device`` is the device the executor gave the worker
(``"cuda"`` for a worker that owns a GPU) or None (keep the tensors where they are). Jobs must
not depend on each other or on the order they run in: the executors run them in any order, in
other processes or on other machines, and retry a job whose worker died.

Executors are registered by name (``@register_executor``); :func:`make_executor` builds one
from its name and options, the way ``executor=..., executor_options={...}`` arrive.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping
from typing import Any

from depthfx.errors import DepthFXError

#: ``job(shared, item, device) -> result``; a module-level function (it is pickled by name).
Job = Callable[[Any, Any, str | None], Any]

#: Called in the driver with (key, result) as each job finishes.
OnResult = Callable[[Hashable, Any], None]


class JobsFailed(DepthFXError):
    """Some jobs failed after their retries; the others finished (and were handed back).
    ``failures`` maps each failed job's key to what went wrong."""

    def __init__(
        self, failures: Mapping[Hashable, str], what: str = "jobs", hint: str = ""
    ) -> None:
        self.failures = dict(failures)
        lines = "\n".join(f"  {key}: {why}" for key, why in self.failures.items())
        tail = f"\n{hint}" if hint else ""
        super().__init__(f"{len(self.failures)} {what} failed:\n{lines}{tail}")


class Executor(ABC):
    """Runs jobs; subclasses are dataclasses whose fields are the executor's options."""

    name = ""

    @abstractmethod
    def run(
        self, job: Job, items: Mapping[Hashable, Any], shared: Any, on_result: OnResult
    ) -> None:
        """Run ``job(shared, items[key], device)`` for every key and call ``on_result(key,
        result)`` in this process as each finishes. Raises :class:`JobsFailed` naming the keys
        that failed, after every other job has finished."""


#: Registered executors by name.
EXECUTORS: dict[str, type[Executor]] = {}


def register_executor(name: str) -> Callable[[type[Executor]], type[Executor]]:
    """Class decorator: register an executor under ``name`` (once)."""

    def register(cls: type[Executor]) -> type[Executor]:
        if name in EXECUTORS:
            raise DepthFXError(f"executor {name!r} is already registered")
        cls.name = name
        EXECUTORS[name] = cls
        return cls

    return register


def make_executor(name: str, options: Mapping[str, Any] | None = None) -> Executor:
    """The executor registered as ``name`` with ``options`` (its dataclass fields); a clear
    error for an unknown name or option."""
    if name not in EXECUTORS:
        raise DepthFXError(
            f"unknown executor {name!r}: use one of {', '.join(map(repr, sorted(EXECUTORS)))}"
        )
    cls = EXECUTORS[name]
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(options or {}) - fields)
    if unknown:
        raise DepthFXError(
            f"executor {name!r} has no option {', '.join(map(repr, unknown))}; its options: "
            f"{', '.join(sorted(fields)) or 'none'}"
        )
    return cls(**dict(options or {}))


__all__ = [
    "EXECUTORS",
    "Executor",
    "Job",
    "JobsFailed",
    "OnResult",
    "make_executor",
    "register_executor",
]
