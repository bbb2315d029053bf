"""depthfx.finetune under ``torchrun --nproc-per-node 2`` (gloo, CPU): data-parallel on the
same global batches as a single process (loss curve within tolerance), the same model on every
rank, a checkpoint written by rank 0 that every rank resumes from, convert exact."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")

SCRIPT = Path(__file__).parent / "data_parallel_run.py"
ROOT = Path(__file__).parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _script():
    spec = importlib.util.spec_from_file_location("data_parallel_run", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes(tmp_path: Path) -> None:
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", str(_free_port()), str(SCRIPT), str(tmp_path)]  # fmt: skip
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    script = _script()
    assert result["world"] == 2 and len(result["losses"]) == script.STEPS
    assert result["checkpoints"] == ["full.pt", "resumed.pt"]
    # resumed at step 16 from rank 0's checkpoint: the rest of the run, bit for bit
    assert result["resumed"] == result["losses"][script.STOP :]
    assert result["resumed_equals_full"] and result["same_on_every_rank"]
    assert result["convert_error"] < 1e-4

    teacher, _, prep = script.prepared()
    single = script.train(teacher, prep)  # one process, the same global batches
    # BN normalises with each rank's half batch: close, not equal
    np.testing.assert_allclose(result["losses"], single, rtol=0.01)
    assert single[-1] < single[0] and result["losses"][-1] < result["losses"][0]


def test_rank_shares_of_a_step_are_the_single_process_batch() -> None:
    import torch
    from torch.utils.data import TensorDataset

    from depthfx.data_parallel import Group, shard_loader
    from depthfx.finetune import as_loader

    n, batch, world = 22, 8, 2
    data = TensorDataset(torch.arange(n))
    order = [int(i) for (b,) in as_loader(data, n, shuffle=True, seed=3, epoch=1) for i in b]
    single = [b.tolist() for (b,) in as_loader(data, batch, shuffle=True, seed=3, epoch=1)]
    ranks = [
        [
            b.tolist()
            for (b,) in shard_loader(data, batch, order, Group(r, world, torch.device("cpu")))
        ]
        for r in range(world)
    ]
    assert all(len(r) == len(single) for r in ranks)
    for k, expected in enumerate(single):
        assert sorted(ranks[0][k] + ranks[1][k]) == sorted(expected)
    with pytest.raises(Exception, match="multiple of the 2 processes"):
        shard_loader(data, 7, order, Group(0, world, torch.device("cpu")))
