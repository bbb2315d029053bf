"""Example: the staged API with data-parallel fine-tuning under torchrun.

    torchrun --nproc-per-node 2 examples/finetune_ddp.py             # CPU processes, gloo
    torchrun --nproc-per-node 4 examples/finetune_ddp.py --cuda      # one GPU each, nccl

    depthfx.plan      rank 0 only: latency table on ONNX Runtime (CPU) + proxy importance
    depthfx.prepare   every rank, from the same plan (sent from rank 0)
    depthfx.finetune  data-parallel: DDP, the global batch split across the ranks, distilling
                      from the original on every rank, checkpoint written by rank 0
    depthfx.convert   each merge group becomes one conv (exact, verified)

Rank 0 trains a small CNN on scikit-learn's digits (8×8) and plans; the trained weights and the
plan go to every rank (timing differs between processes, so only one may plan: every rank must
prepare the same network); it saves both beside the checkpoint. Rank 0 prints top-1 before and
after fine-tuning. Run it again with the same ``--checkpoint`` after an interruption: the same
original and plan are read back and every rank resumes from rank 0's checkpoint.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import depthfx
from depthfx.finetune import as_loader, evaluate
from depthfx.passes.convert import count_convs


def small_cnn() -> nn.Sequential:
    """One chain of five convs (two of them linear) and a linear classifier."""

    def block(cin: int, cout: int, act: bool = True) -> list[nn.Module]:
        layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)]
        return layers + ([nn.ReLU()] if act else [])

    return nn.Sequential(
        *block(1, 16), *block(16, 16, act=False), *block(16, 32), *block(32, 32, act=False),
        *block(32, 32), nn.Flatten(), nn.Linear(32 * 8 * 8, 10),
    )  # fmt: skip


def digits() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """scikit-learn's digits as (train, test) pairs of tensors, images scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target)
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


def train(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], epochs: int) -> None:
    """A plain loop for the original network (rank 0 only)."""
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for epoch in range(epochs):
        for x, y in as_loader(data, 64, shuffle=True, epoch=epoch):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", type=float, default=0.7, help="fraction of the latency")
    p.add_argument("--epochs", type=int, default=8, help="training epochs of the original")
    p.add_argument("--finetune-epochs", type=float, default=3)
    p.add_argument("--batch-size", type=int, default=128, help="the global batch")
    p.add_argument("--checkpoint", type=Path, default=Path("finetune_ddp.pt"))
    p.add_argument("--cuda", action="store_true", help="one GPU per process (nccl)")
    args = p.parse_args()

    torch.set_num_threads(1)  # torchrun starts several processes on this machine's cores
    dist.init_process_group("nccl" if args.cuda else "gloo")
    rank = dist.get_rank()
    train_data, test_data = digits()
    x = train_data[0][:1]
    torch.manual_seed(0)
    model = small_cnn()
    message: list[object] = [None, None]
    start = args.checkpoint.with_suffix(".start.pt")  # the original and the plan, for resuming
    if rank == 0 and start.exists():
        message = torch.load(start, weights_only=True)
        print(f"resuming: the original and its plan from {start}")
    elif rank == 0:
        t0 = time.perf_counter()
        train(model, train_data, args.epochs)
        plan = depthfx.plan(model, (x,), budget=args.budget, data=test_data[0][:256],
                            latency_options={"threads": 1})  # fmt: skip
        message = [model.state_dict(), plan.to_json()]
        torch.save(message, start)
        print(f"rank 0 trained and planned in {time.perf_counter() - t0:.0f} s: top-1 "
              f"{evaluate(model, test_data)[1]:.2f}%, predicted {plan.predicted_ms:.3f} ms "
              f"for a budget of {plan.budget_ms:.3f} ms")  # fmt: skip
    dist.broadcast_object_list(message, src=0)
    model.load_state_dict(message[0])
    plan = depthfx.Plan.from_json(message[1])

    prepared = depthfx.prepare(model, plan, (x,))
    if rank == 0:
        before = evaluate(depthfx.convert(prepared, plan, (x,)), test_data)[1]
        print(f"merged before fine-tuning: top-1 {before:.2f}%")
    if args.cuda:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        model, prepared = model.to(device), prepared.to(device)
    t0 = time.perf_counter()
    depthfx.finetune(
        prepared, train_data, epochs=args.finetune_epochs, lr=0.05,
        batch_size=args.batch_size, distill_from=model, checkpoint=args.checkpoint,
    )  # fmt: skip
    if rank == 0:
        fast = depthfx.convert(prepared.cpu(), plan, (x,))
        print(f"fine-tuned on {dist.get_world_size()} processes in "
              f"{time.perf_counter() - t0:.0f} s; merged: top-1 "
              f"{evaluate(fast, test_data)[1]:.2f}%, convs {count_convs(model.cpu())} -> "
              f"{count_convs(fast)}")  # fmt: skip
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
