"""Run by tests/test_data_parallel.py under ``torchrun --nproc-per-node 2`` (gloo): fine-tune a
prepared CNN on scikit-learn digits data-parallel, distilling from the original; interrupt a
second run at a checkpoint and resume it on every rank; convert. Rank 0 writes what the test
checks to OUT/result.json. The test imports ``prepared`` and ``train`` for the single-process
run on the same global batches."""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import depthfx
from depthfx.passes.analyze import analyze
from depthfx.passes.convert import convert
from depthfx.passes.prepare import prepare
from depthfx.plans import Plan
from depthfx.testing import merge_everything_plan

X1 = torch.zeros(1, 1, 8, 8)
STEPS, BATCH, EVERY, STOP = 24, 64, 8, 16


class Net(nn.Module):
    """conv-bn-relu, conv-bn, conv-bn + residual, relu; pool; a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c3, self.b3 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(x + self.b3(self.c3(self.b2(self.c2(x)))))
        return self.fc(x.mean((2, 3)))


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return x[:1000], torch.tensor(d.target)[:1000]


def prepared() -> tuple[nn.Module, Plan, torch.fx.GraphModule]:
    """The original (the teacher), its plan (every conv merged) and its prepared network."""
    torch.manual_seed(0)
    model = Net().eval()
    plan = merge_everything_plan(analyze(model, X1, training=False))
    return model, plan, prepare(model, plan)


class Interrupted(Exception):
    pass


def train(
    teacher: nn.Module, prep: torch.fx.GraphModule, checkpoint: Path | None = None,
    stop: int | None = None,
) -> list[float]:  # fmt: skip
    """Fine-tune ``prep``; the loss of every step (averaged over the ranks)."""
    losses: list[float] = []

    def on_step(step: int, loss: float) -> None:
        losses.append(loss)
        if step + 1 == stop:
            raise Interrupted

    depthfx.finetune(
        prep, digits(), steps=STEPS, lr=0.05, batch_size=BATCH, distill_from=teacher,
        checkpoint=checkpoint, checkpoint_every=EVERY, progress=False, on_step=on_step,
    )  # fmt: skip
    return losses


def digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode() + t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def main(out: Path) -> None:
    torch.set_num_threads(1)
    teacher, plan, prep = prepared()
    losses = train(teacher, prep, out / "full.pt")
    _, _, again = prepared()
    with contextlib.suppress(Interrupted):
        train(teacher, again, out / "resumed.pt", stop=STOP)
    resumed = train(teacher, again, out / "resumed.pt")  # every rank loads rank 0's checkpoint
    digests: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(digests, digest(prep))
    fast = convert(prep, plan)  # raises MergeMismatch unless merged == prepared
    x = digits()[0][:64]
    with torch.no_grad():
        error = float((fast(x) - prep.eval()(x)).abs().max())
    if dist.get_rank() == 0:
        result = {
            "world": dist.get_world_size(),
            "losses": losses,
            "resumed": resumed,
            "same_on_every_rank": len(set(digests)) == 1,
            "resumed_equals_full": digest(again) == digest(prep),
            "convert_error": error,
            "checkpoints": sorted(p.name for p in out.glob("*.pt")),
        }
        (out / "result.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
