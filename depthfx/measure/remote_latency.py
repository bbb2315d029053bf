"""Latency tables measured where the model will run: the whole measurement as ONE Ray task on
a chosen node of a cluster (``measure_latency_table(..., executor="ray",
executor_options={"resources": {"<node label>": 1}})``).

The node is the one whose Ray resources hold the label (``ray start --resources='{"<node
label>": 1}'``; Ray's own ``node:<ip>`` works too). The task runs the measurement there, so the
table's fingerprint (device, CPU or GPU model, library versions, threads) is that node's,
measured inside the task; ``meta["node"]`` records where (host name, IP, Ray node id) and when
(``started`` and ``finished``, in seconds since the epoch).

Never two timing jobs on one node at once: the task takes the whole node
(:func:`depthfx.executors.ray.whole_node`): all of the label resource and every CPU and GPU
Ray knows on that node, so Ray schedules nothing else there while blocks are timed (another
latency table, importance entries: they would be measured as contention). Requesting only the
label would keep other timing jobs away but not other work. A worker that dies is not retried
unless ``max_retries`` says so (a latency table is minutes of timing; its ``cache_dir``, on the
node, resumes it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from depthfx.errors import DepthFXError
from depthfx.executors import make_executor
from depthfx.solver import LatencyTable

#: ``measure(model, example_inputs, **options) -> LatencyTable``: what the task runs.
Measure = Callable[..., LatencyTable]


def measure_remotely(
    measure: Measure,
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    options: Mapping[str, Any],
    executor: str,
    executor_options: Mapping[str, Any] | None,
) -> LatencyTable:
    """``measure(model, example_inputs, **options)`` as one task of ``executor`` (``"ray"``)
    on the node holding ``executor_options["resources"]``; the table comes back with that
    node's fingerprint and ``meta["node"]``."""
    if executor != "ray":
        raise DepthFXError(
            f"latency tables are measured here (executor='serial') or as one Ray task on a "
            f"chosen node (executor='ray'), not with executor={executor!r}"
        )
    chosen = dict(executor_options or {})
    if not chosen.get("resources"):
        raise DepthFXError(
            "executor='ray' measures on one node: pass executor_options={'resources': "
            "{'<node label>': 1}} naming a resource of that node"
        )
    runner = make_executor(executor, {"max_retries": 0, **chosen, "exclusive": True})
    tables: list[LatencyTable] = []
    runner.run(measure_job, {"latency": None}, (measure, model, example_inputs, dict(options)),
               lambda key, table: tables.append(table))  # fmt: skip
    return tables[0]


def measure_job(shared: tuple[Measure, nn.Module, Any, dict[str, Any]], item: None,
                device: str | None) -> LatencyTable:  # fmt: skip
    """The task: measure here, and record where and when."""
    from depthfx.executors.ray import current_node

    measure, model, example_inputs, options = shared
    node = current_node()
    table = measure(model, example_inputs, **options)
    table.meta["node"] = {**node, "finished": time.time()}
    return table


__all__ = ["Measure", "measure_job", "measure_remotely"]
