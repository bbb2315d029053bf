"""BatchNorm re-estimation (the EagleEye observation): after ``prepare`` removes activations, the
BN layers inside and after a merged block see other input statistics than the ones they stored.
Re-estimating the running statistics on a few batches recovers much of the accuracy lost before
any fine-tuning, changes no weight, and stays exact to ``convert`` (BN folds whatever its
buffers hold).

How: every BN module's running statistics are reset and re-estimated as a cumulative average
(``momentum=None``, so the order of the batches does not matter) in train mode, with the rest of
the network in eval mode (dropout and stochastic depth off) and without gradients.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, Dataset
from torch.utils.hooks import RemovableHandle

from depthfx.errors import DepthFXError

#: Images per batch when ``data`` is a tensor or a Dataset (BN statistics are averaged over
#: batches, so the size changes only the noise of the variance estimate).
RECALIBRATION_BATCH = 128


def recalibrate_bn(
    model: nn.Module,
    data: Any,
    batches: int | None = None,
    *,
    batch_size: int = RECALIBRATION_BATCH,
) -> nn.Module:
    """Re-estimate the running statistics of every BatchNorm module of ``model`` in place on
    ``data`` (a tensor of inputs, an (inputs, labels) pair of tensors, a Dataset, or an iterable
    of inputs or of (input, label, …) batches); ``batches`` caps the batches used (None: all).
    Only BN buffers change; every module's train/eval mode is restored. Returns ``model``."""
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not norms:
        return model
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in norms}
    device = next(iter(model.parameters()), torch.empty(0)).device
    seen = 0
    try:
        model.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        with torch.no_grad():
            for x in _inputs(data, batch_size):
                if batches is not None and seen >= batches:
                    break
                model(x.to(device))
                seen += 1
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        for m, mode in modes.items():
            m.training = mode
    if seen == 0:
        raise DepthFXError("BN re-estimation got no batch: the data is empty")
    return model


def estimate_bn_in_pass(model: nn.Module, chunk: int) -> list[RemovableHandle]:
    """One-pass BN re-estimation: from now on every BatchNorm module of ``model``, when it
    runs, first sets its running statistics from its own input (split into chunks of
    ``chunk`` images and averaged, as :func:`recalibrate_bn`'s cumulative average over
    batches of that size), then normalises with them; run ``model`` in eval mode on all the
    images in one batch. Returns the hooks (``.remove()`` them to stop).

    Why: :func:`recalibrate_bn` needs a statistics pass and then an evaluation pass; here one
    pass does both. The statistics differ slightly: each layer's come from the inputs it sees
    in eval mode (its predecessors already re-estimated), not in train mode (normalised with
    batch statistics); with one batch a layer's train- and eval-mode inputs differ only by
    the n/(n−1) variance correction of the layers before it."""
    if chunk < 1:
        raise DepthFXError(f"chunk must be >= 1, got {chunk}")

    def estimate(module: _BatchNorm, args: tuple[Any, ...]) -> None:
        mean, var = torch.zeros_like(module.running_mean), torch.zeros_like(module.running_var)
        parts = args[0].split(chunk)
        for part in parts:
            m, v = torch.zeros_like(mean), torch.ones_like(var)
            F.batch_norm(part, m, v, None, None, True, 1.0, module.eps)  # m, v := batch stats
            mean += m
            var += v
        module.running_mean.copy_(mean / len(parts))
        module.running_var.copy_(var / len(parts))

    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    return [m.register_forward_pre_hook(estimate) for m in norms]


def _inputs(data: Any, batch_size: int) -> Iterator[torch.Tensor]:
    """The input tensor of every batch of ``data`` (labels dropped). Two tensors are an
    (inputs, labels) pair when the second has fewer dimensions, else two batches of inputs."""
    if (
        isinstance(data, tuple | list) and len(data) == 2
        and all(isinstance(t, torch.Tensor) for t in data) and data[1].dim() < data[0].dim()
    ):  # fmt: skip
        data = data[0]
    if isinstance(data, torch.Tensor):
        yield from data.split(batch_size)
        return
    if isinstance(data, Dataset) and hasattr(data, "__len__"):
        data = DataLoader(data, batch_size=batch_size, shuffle=False)
    if not isinstance(data, Iterable):
        raise DepthFXError(
            f"cannot re-estimate BN on {type(data).__name__}: give a tensor, an (inputs, labels) "
            "pair, a Dataset or an iterable of batches"
        )
    for item in data:
        x = item[0] if isinstance(item, tuple | list) else item
        if not isinstance(x, torch.Tensor):
            raise DepthFXError(f"a batch's input is a {type(x).__name__}, not a tensor")
        yield x


__all__ = ["RECALIBRATION_BATCH", "estimate_bn_in_pass", "recalibrate_bn"]
