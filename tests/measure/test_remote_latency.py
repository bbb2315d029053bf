"""Latency tables measured as one Ray task on a labelled node (a local cluster with the label
``bench``): the table is the node's (fingerprint measured in the task, ``meta["node"]``), two
tables for one node are never timed at once, and a label no node has is a clear error."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from latency_helpers import FAST
from torch import nn

from depthfx.errors import DepthFXError
from depthfx.solver import LatencyTable

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    from depthfx.executors.ray import connect

    started = connect(num_cpus=2, resources={"bench": 1})
    yield
    if started:
        ray.shutdown()


def _measure(net: nn.Module, x: torch.Tensor, **options) -> LatencyTable:
    return LatencyTable.measure(
        net, (x,), threads=1, protocol=FAST, end_to_end=False, progress=False, **options
    )


def _on_node(net: nn.Module, x: torch.Tensor, label: str = "bench") -> LatencyTable:
    return _measure(net, x, executor="ray", executor_options={"resources": {label: 1}})


def test_table_is_measured_on_the_labelled_node(cluster, net, x) -> None:
    from depthfx.executors.ray import whole_node

    assert whole_node({"bench": 1}) == {"resources": {"bench": 1.0}, "num_cpus": 2.0,
                                        "num_gpus": 0.0}  # fmt: skip
    with ThreadPoolExecutor(2) as pool:
        tables = list(pool.map(lambda _: _on_node(net, x), range(2)))
    (node,) = [n["NodeID"] for n in ray.nodes() if "bench" in n["Resources"]]
    table = _measure(net, x)
    for remote in tables:
        assert set(remote.times) == set(table.times)
        assert remote.meta["fingerprint"] == table.meta["fingerprint"]  # this machine's
        assert remote.meta["node"]["node_id"] == node
    first, second = sorted((t.meta["node"] for t in tables), key=lambda n: n["started"])
    assert first["finished"] <= second["started"]  # one timing job on the node at a time


def test_unknown_label_and_other_executors_are_errors(cluster, net, x) -> None:
    with pytest.raises(DepthFXError, match=r"no live Ray node has the resources.*bench"):
        _on_node(net, x, "gpu-box")
    with pytest.raises(DepthFXError, match=r"executor='serial'.*executor='ray'"):
        LatencyTable.measure(net, (x,), executor="processes")
    with pytest.raises(DepthFXError, match="resources"):
        LatencyTable.measure(net, (x,), executor="ray")
