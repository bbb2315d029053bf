"""Executors: run one independent job per key (an importance entry, a latency table) and hand
each result back to the driver as it arrives.

``serial`` (:mod:`.serial`, the default) runs them here in order; ``processes``
(:mod:`.processes`) in a pool of spawned processes on this machine, retrying jobs whose worker
died in a fresh pool; ``ray`` (:mod:`.ray`) as Ray tasks on a cluster or a local one. They are
registered by name (:mod:`.base`), so ``executor="ray", executor_options={...}`` picks one.
This package sits under the measure layer and imports only the core (errors); Ray and torch are
imported when a job runs, so ``import depthfx`` imports neither.
"""

from depthfx.executors import processes, ray, serial  # noqa: F401  (registration)
from depthfx.executors.base import (
    EXECUTORS,
    Executor,
    Job,
    JobsFailed,
    OnResult,
    make_executor,
    register_executor,
)
from depthfx.executors.processes import ProcessesExecutor
from depthfx.executors.ray import RayExecutor
from depthfx.executors.serial import SerialExecutor

__all__ = [
    "EXECUTORS",
    "Executor",
    "Job",
    "JobsFailed",
    "OnResult",
    "ProcessesExecutor",
    "RayExecutor",
    "SerialExecutor",
    "make_executor",
    "register_executor",
]
