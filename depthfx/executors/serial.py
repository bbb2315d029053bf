"""The default executor: every job in this process, one after the other, in order.

It fails fast: a job's exception propagates as it is (with its own traceback), since nothing
runs beside it that could still finish; the results handed back before it are kept by the
caller.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from depthfx.executors.base import Executor, Job, OnResult, register_executor


@register_executor("serial")
@dataclass
class SerialExecutor(Executor):
    """No options: the jobs use this process's device and torch threads."""

    def run(
        self, job: Job, items: Mapping[Hashable, Any], shared: Any, on_result: OnResult
    ) -> None:
        for key, item in items.items():
            on_result(key, job(shared, item, None))


__all__ = ["SerialExecutor"]
