"""Data-parallel fine-tuning: what :func:`depthfx.finetune` does differently when it runs in
several processes (``torchrun --nproc-per-node N script.py``, or any initialised
``torch.distributed`` group).

* **Group.** An initialised ``torch.distributed`` group is used as it is; otherwise, when
  torchrun's environment names more than one process (``WORLD_SIZE``), it is initialised here:
  nccl for a model on CUDA (each rank on ``cuda:LOCAL_RANK``), gloo on CPU.
* **Model.** ``DistributedDataParallel`` over the prepared GraphModule itself: gradients are
  averaged across ranks at every step, so parameters and optimiser state stay identical. BN
  layers normalise with their rank's batch; DDP copies rank 0's BN statistics to every rank
  before each forward, and once more at the end, so every rank ends with the same model.
* **Batches.** ``batch_size`` stays the global batch: each rank takes ``batch_size / N``
  samples per step, by stride from the single-process order of the epoch (a DistributedSampler
  whose order per (seed, epoch) is the one a single process uses). So step k of the ranks
  together sees the samples of step k of a single-process run (only the padding of the last
  batch of an epoch differs), with the same number of steps and learning-rate schedule.
* **Loss, progress, checkpoints.** The loss is averaged across ranks (so a divergence raises on
  every rank at once; the progress bar, on rank 0 only, shows it). Checkpoints are written by
  rank 0 only, then all ranks meet at a barrier; every rank resumes from the same file.

``finetune`` imports this module when it runs, so ``import depthfx`` imports no torch.distributed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from depthfx.errors import DepthFXError


@dataclass(frozen=True)
class Group:
    """This process's place in the data-parallel group and the device its rank trains on."""

    rank: int
    world: int
    device: torch.device

    @property
    def leader(self) -> bool:
        """Rank 0: the one that writes checkpoints and shows progress."""
        return self.rank == 0


def join(device: torch.device) -> Group | None:
    """The data-parallel group of this process (initialised from torchrun's environment when
    needed), or None when it trains alone. ``device``: where the model is; a CUDA model trains
    on ``cuda:LOCAL_RANK``."""
    if not dist.is_available():
        return None
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return None
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.get_world_size() <= 1:
        return None
    if device.type == "cuda":
        local = os.environ.get("LOCAL_RANK")
        index = int(local) if local is not None else dist.get_rank() % torch.cuda.device_count()
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    return Group(dist.get_rank(), dist.get_world_size(), device)


def wrap(model: nn.Module, group: Group) -> nn.Module:
    """``model`` in DistributedDataParallel on the group's device (parameters from rank 0)."""
    model.to(group.device)
    ids = [group.device] if group.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def shard_loader(
    dataset: Dataset, batch_size: int, order: Sequence[int], group: Group
) -> Iterable[Any]:
    """This rank's batches of one epoch: ``batch_size / world`` samples per step, by stride
    from ``order`` (the single-process order of the epoch)."""
    if batch_size % group.world:
        raise DepthFXError(
            f"batch_size {batch_size} is the global batch: it must be a multiple of the "
            f"{group.world} processes"
        )
    sampler = EpochShard(dataset, order, group)
    return DataLoader(dataset, batch_size=batch_size // group.world, sampler=sampler)


class EpochShard(DistributedSampler):
    """A DistributedSampler that walks a given order (the single-process one of the epoch)
    instead of its own permutation: rank r takes positions r, r + N, …, padded like
    DistributedSampler so that every rank has as many samples."""

    def __init__(self, dataset: Dataset, order: Sequence[int], group: Group) -> None:
        super().__init__(dataset, num_replicas=group.world, rank=group.rank, shuffle=False)
        self.order = list(order)

    def __iter__(self) -> Iterator[int]:
        order = self.order + self.order[: self.total_size - len(self.order)]
        return iter(order[self.rank : self.total_size : self.num_replicas])


def mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar over the ranks (gloo has no AVG: a sum, divided)."""
    total = value.detach().clone()
    dist.all_reduce(total)
    return total / dist.get_world_size()


def barrier() -> None:
    """Every rank waits here (after rank 0 wrote a checkpoint)."""
    dist.barrier()


def broadcast_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BN statistics) to every rank."""
    for buffer in model.buffers():
        dist.broadcast(buffer, 0)


__all__ = [
    "EpochShard",
    "Group",
    "barrier",
    "broadcast_buffers",
    "join",
    "mean",
    "shard_loader",
    "wrap",
]
