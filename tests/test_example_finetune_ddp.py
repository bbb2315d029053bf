"""examples/finetune_ddp.py under ``torchrun --nproc-per-node 2`` with tiny settings: it plans
on rank 0, fine-tunes on both ranks, converts, and a second run resumes from the checkpoint."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("onnxruntime")

EXAMPLE = Path(__file__).parents[1] / "examples" / "finetune_ddp.py"

pytestmark = pytest.mark.slow


def _run(tmp_path: Path) -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = os.pathsep.join([str(EXAMPLE.parents[1]), os.environ.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", str(port), str(EXAMPLE), "--epochs", "2", "--finetune-epochs", "0.5",
           "--checkpoint", str(tmp_path / "ft.pt")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout


def test_example_under_torchrun(tmp_path: Path) -> None:
    out = _run(tmp_path)
    assert "rank 0 trained and planned" in out and "fine-tuned on 2 processes" in out
    assert (tmp_path / "ft.pt").exists() and (tmp_path / "ft.start.pt").exists()
    again = _run(tmp_path)  # the same plan, a complete checkpoint: nothing to train
    assert "resuming: the original and its plan" in again and "fine-tuned on 2" in again
