"""The executor registry and options; the serial executor; what ``import depthfx`` imports."""

from __future__ import annotations

import subprocess
import sys

import pytest

from depthfx.errors import DepthFXError
from depthfx.executors import EXECUTORS, JobsFailed, make_executor
from depthfx.executors.processes import ProcessesExecutor


def _double(shared: int, item: int, device: str | None) -> int:
    return shared * item


def test_registry_and_options() -> None:
    assert set(EXECUTORS) >= {"serial", "processes", "ray"}
    assert make_executor("processes", {"workers": 2}) == ProcessesExecutor(workers=2)
    with pytest.raises(DepthFXError, match="unknown executor 'dask'"):
        make_executor("dask")
    with pytest.raises(DepthFXError, match=r"executor 'ray' has no option 'workers'.*local_cpus"):
        make_executor("ray", {"workers": 2})


def test_serial_runs_in_order_and_hands_each_result_back() -> None:
    seen: list[tuple[str, int]] = []
    make_executor("serial").run(_double, {"a": 1, "b": 2}, 10, lambda k, r: seen.append((k, r)))
    assert seen == [("a", 10), ("b", 20)]


def test_jobs_failed_names_every_key() -> None:
    err = JobsFailed({(0, 1): "RuntimeError: x"}, "entries", "run again")
    assert str(err) == "1 entries failed:\n  (0, 1): RuntimeError: x\nrun again"


def _imported(code: str) -> list[str]:
    """Ray and torch.distributed modules imported by ``code`` in a fresh interpreter."""
    probe = (
        f"import sys\n{code}\n"
        "print(','.join(m for m in sys.modules if m.split('.')[0] == 'ray' "
        "or m.startswith('torch.distributed')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return list(filter(None, out.stdout.strip().split(",")))


def test_import_depthfx_imports_no_ray_nor_launcher() -> None:
    assert _imported("import depthfx") == []  # not even torch (so no torch.distributed)
    imported = _imported(
        "import depthfx, depthfx.executors, depthfx.finetune, depthfx.measure.importance"
    )
    assert not [m for m in imported if m.split(".")[0] == "ray"]
    launchers = ("torch.distributed.run", "torch.distributed.launch", "torch.distributed.elastic")
    assert not [m for m in imported if m.startswith(launchers)]
