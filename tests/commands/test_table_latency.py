"""``depthfx table latency --executor ray --resource LABEL``: the table measured as one Ray task
on the labelled node of a local cluster, and clear errors for flags of the wrong executor."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from depthfx.solver import LatencyTable

MODEL = """import torch
from torch import nn

def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.Conv2d(8, 8, 1))
"""


def _argv(tmp_path: Path, *extra: str) -> list[str]:
    (tmp_path / "m.py").write_text(MODEL)
    return ["table", "latency", f"{tmp_path / 'm.py'}:make", "--input-shape", "1,3,12,12",
            "--no-calibration", "-o", str(tmp_path / "lat.json"), *extra]  # fmt: skip


@pytest.fixture
def cli(monkeypatch):
    import depthfx.cli
    import depthfx.commands.table

    monkeypatch.setattr(depthfx.commands.table, "KINDS", ("latency",))
    monkeypatch.setattr(depthfx.cli, "COMMANDS", ("table",))
    return depthfx.cli.main


@pytest.fixture
def cluster() -> Iterator[None]:
    ray = pytest.importorskip("ray")
    from depthfx.executors.ray import connect

    started = connect(num_cpus=2, resources={"bench": 1})
    yield
    if started:
        ray.shutdown()


def test_measured_on_the_labelled_node(tmp_path, cli, cluster, capsys) -> None:
    import ray

    assert cli(_argv(tmp_path, "--executor", "ray", "--resource", "bench")) == 0
    table = LatencyTable.read_json(tmp_path / "lat.json")
    (node,) = [n["NodeID"] for n in ray.nodes() if "bench" in n["Resources"]]
    assert table.meta["node"]["node_id"] == node
    assert len(table.times) == 6  # the valid blocks of one chain of 3 convs
    assert f"Ray node {node}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--resource", "bench"), "only apply with --executor ray"),
        (("--address", "auto"), "only apply with --executor ray"),
        (("--executor", "ray"), "name it with --resource"),
        (("--executor", "ray", "--resource", "bench=0"), "bad --resource 'bench=0'"),
        (("--executor", "ray", "--resource", "bench=x"), "bad --resource 'bench=x'"),
    ],
)
def test_bad_flags_are_one_clear_error(tmp_path, cli, capsys, extra, message) -> None:
    assert cli(_argv(tmp_path, *extra)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "lat.json").exists()
