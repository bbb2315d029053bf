"""Ray: each job a Ray task, on an existing cluster (``address``) or on a local one started here
with this machine's cores. Ray is an optional extra (``pip install depthfx[ray]``) imported only
when a job runs.

The shared object is put into the object store once (``ray.put``) and every task gets its
reference, so the model and the data travel to each node once, not once per task. Each task
asks for ``num_cpus`` CPUs (its torch threads) and ``num_gpus`` GPUs (then its jobs get
``device="cuda"``; Ray sets ``CUDA_VISIBLE_DEVICES``) plus any custom ``resources``. Ray retries
a task whose worker died ``max_retries`` times (and one that raised, with ``retry_exceptions``);
results are handed back in the order they finish. Tasks still running when the driver stops
are cancelled, so a cluster does not keep working for a driver that is gone.

The workers import the jobs' modules (depthfx, and the module of a user's method) by name: on
a cluster, install them on every node or pass ``runtime_env`` (e.g. ``{"py_modules": [...]}``);
a local cluster started here gets the driver's ``sys.path``.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from depthfx.errors import DepthFXError
from depthfx.executors.base import Executor, Job, JobsFailed, OnResult, register_executor

#: Ray's setting of its workers' niceness (read by a cluster when it starts).
NICENESS = "RAY_worker_niceness"


def connect(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    resources: Mapping[str, float] | None = None,
    runtime_env: Mapping[str, Any] | None = None,
) -> bool:
    """Connect this process to Ray: to the cluster at ``address`` (``"auto"``: the one this
    machine belongs to), else, when Ray is not running here yet, to a new local cluster with
    ``num_cpus`` CPUs (default: every core) and ``resources``, no dashboard, whose workers see
    the driver's ``sys.path`` and run at its priority (``RAY_worker_niceness``, default 0 here
    instead of Ray's 15). Returns True when it connected (then ``ray.shutdown()`` is the
    caller's), False when this process was connected already."""
    ray = _ray()
    if ray.is_initialized():
        return False
    env = dict(runtime_env or {})
    if address is None:
        path = os.pathsep.join(p for p in sys.path if p)
        env["env_vars"] = {"PYTHONPATH": path, **env.get("env_vars", {})}
        # Ray runs workers at niceness 15 by default: on a machine doing anything else they
        # would get a fraction of the CPU the serial and processes executors get.
        preset = NICENESS in os.environ
        os.environ.setdefault(NICENESS, "0")
        try:
            ray.init(
                num_cpus=num_cpus,
                resources=dict(resources or {}),
                include_dashboard=False,
                runtime_env=env,
            )
        finally:
            if not preset:
                del os.environ[NICENESS]
    else:
        ray.init(address=address, runtime_env=env or None)
    return True


def whole_node(resources: Mapping[str, float]) -> dict[str, Any]:
    """Task options that take a whole node holding every one of ``resources``: all of each
    of those resources and every CPU and GPU of the node, so that Ray runs nothing else there
    meanwhile. A label held by several nodes: sized to the smallest, so it fits any of them."""
    ray = _ray()
    nodes = [
        n["Resources"]
        for n in ray.nodes()
        if n.get("Alive") and all(k in n["Resources"] for k in resources)
    ]
    if not nodes:
        custom = sorted(
            {k for n in ray.nodes() for k in n["Resources"]}
            - {"CPU", "GPU", "memory", "object_store_memory"}
        )
        raise DepthFXError(
            f"no live Ray node has the resources {sorted(resources)}; the cluster's: "
            f"{', '.join(custom) or 'none'} (start a node with ray start --resources=...)"
        )
    return {
        "resources": {k: min(n[k] for n in nodes) for k in resources},
        "num_cpus": min(n.get("CPU", 0.0) for n in nodes),
        "num_gpus": min(n.get("GPU", 0.0) for n in nodes),
    }


def current_node() -> dict[str, Any]:
    """Where and since when this task runs: host name, IP, Ray node id, start time."""
    ray = _ray()
    return {
        "hostname": socket.gethostname(),
        "ip": ray.util.get_node_ip_address(),
        "node_id": ray.get_runtime_context().get_node_id(),
        "started": time.time(),
    }


def _task(job: Job, shared: Any, item: Any, threads: int, device: str | None) -> Any:
    import torch

    torch.set_num_threads(threads)
    return job(shared, item, device)


@register_executor("ray")
@dataclass
class RayExecutor(Executor):
    """``address``: the cluster (None: the Ray this process runs, else a new local one with
    ``local_cpus`` CPUs); per task ``num_cpus`` (= its torch threads), ``num_gpus`` and
    custom ``resources``; ``exclusive``: each task takes a whole node holding ``resources``
    (:func:`whole_node`); ``max_retries`` after a worker death (and after an exception, with
    ``retry_exceptions``); ``runtime_env`` for the workers."""

    address: str | None = None
    num_cpus: float = 1
    num_gpus: float = 0
    resources: dict[str, float] | None = None
    exclusive: bool = False
    max_retries: int = 2
    retry_exceptions: bool = False
    runtime_env: dict[str, Any] | None = None
    local_cpus: int | None = None

    def run(
        self, job: Job, items: Mapping[Hashable, Any], shared: Any, on_result: OnResult
    ) -> None:
        ray = _ray()
        started = connect(self.address, num_cpus=self.local_cpus, runtime_env=self.runtime_env)
        pending: dict[Any, Hashable] = {}
        failures: dict[Hashable, str] = {}
        try:
            if self.exclusive:
                slot = whole_node(self.resources or {})
            else:
                slot = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus,
                        "resources": dict(self.resources or {})}  # fmt: skip
            task = ray.remote(_task).options(
                **slot, max_retries=self.max_retries, retry_exceptions=self.retry_exceptions
            )
            threads = max(1, int(slot["num_cpus"]))
            device = "cuda" if slot["num_gpus"] > 0 else None
            ref = ray.put(shared)
            for key, item in items.items():
                pending[task.remote(job, ref, item, threads, device)] = key
            while pending:
                (ready,), _ = ray.wait(list(pending), num_returns=1)
                key = pending.pop(ready)
                try:
                    result = ray.get(ready)
                except ray.exceptions.RayError as err:
                    failures[key] = _describe(err)
                else:
                    on_result(key, result)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            if started:
                ray.shutdown()
        if failures:
            raise JobsFailed(failures)


def _describe(err: Exception) -> str:
    """The cause of a failed task in one line (the job's own exception when it raised one)."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    first = str(err).strip().splitlines()
    return f"{type(err).__name__}: {first[0] if first else ''}"


def _ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise DepthFXError(
            "executor 'ray' needs Ray: pip install 'depthfx[ray]' (or pip install ray)"
        ) from err
    return ray


__all__ = ["RayExecutor", "connect", "current_node", "whole_node"]
