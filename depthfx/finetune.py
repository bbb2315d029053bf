"""Fine-tuning with the paper's recipe (spec §3.2, §5.2), for prepared networks.

SGD with Nesterov momentum 0.9 and weight decay 1e-5, a cosine learning-rate decay applied per
iteration (lr_t = lr·(1 + cos(π t / t_max))/2, t = 0 … t_max−1), cross-entropy, and optional
knowledge distillation from the original network: loss = α·CE(softmax(teacher), student) +
(1 − α)·CE(label) at temperature 1 (α = 0.3 in the paper's ``--distill 0.3``). BN layers train.
A checkpoint (model, optimiser, step), written atomically, lets an interrupted run resume.
Started by ``torchrun --nproc-per-node N`` (or in an initialised torch.distributed group) it
trains data-parallel on the same global batches (:mod:`depthfx.data_parallel`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from depthfx.errors import DepthFXError

if TYPE_CHECKING:  # torch is imported inside the functions: ``import depthfx`` stays cheap
    import torch
    from torch import nn

    from depthfx.data_parallel import Group

PathLike = str | os.PathLike[str]

#: ``finetune``'s ``borders=`` values (``training_view``); "approximate" is not exact.
BORDERS = ("exact", "full", "approximate")

#: With ``channels_last=None``, runs of at least this many steps time both memory formats
#: first (``time_memory_formats``: 3 steps each, about 3 % of such a run); shorter ones, and
#: data-parallel ones (every rank must use one format), take channels-last for conv nets, which
#: ``benchmarks/finetune_speed.py`` measured faster on CPU for every network and view.
MEASURE_FORMATS_FROM = 200


def as_loader(
    data: Any, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0
) -> Iterable[Any]:
    """Batches of (input, label) from a Dataset, an (inputs, labels) tensor pair or an iterable
    of batches (used as is). Datasets are shuffled with a generator seeded by (seed, epoch), so
    the order is reproducible and a resumed run sees the same batches."""
    import torch
    from torch.utils.data import DataLoader, Dataset, TensorDataset

    if isinstance(data, tuple | list) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        data = TensorDataset(data[0], torch.as_tensor(data[1]))
    if isinstance(data, Dataset) and hasattr(data, "__len__"):
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=gen)
    if isinstance(data, Iterable):
        return data
    raise DepthFXError(
        f"cannot iterate over {type(data).__name__}: give a Dataset, an (inputs, labels) pair "
        "of tensors or an iterable of (input, label) batches"
    )


def _batches(
    data: Any, batch_size: int, seed: int, start_step: int, total: int, group: Group | None
) -> Iterator[tuple[int, Any]]:
    """(step, batch) for steps start_step … total−1, cycling over epochs; in a data-parallel
    group, this rank's share of each batch."""
    step, epoch = 0, 0
    while step < total:
        loader = (
            as_loader(data, batch_size, shuffle=True, seed=seed, epoch=epoch)
            if group is None
            else _shard(data, batch_size, seed, epoch, group)
        )
        seen = False
        for batch in loader:
            seen = True
            if step >= start_step:
                yield step, batch
            step += 1
            if step >= total:
                return
        if not seen:
            raise DepthFXError("the training data yielded no batch")
        epoch += 1


def _shard(data: Any, batch_size: int, seed: int, epoch: int, group: Group) -> Iterable[Any]:
    """One rank's loader of an epoch, taken from the order a single process uses: the order
    of ``as_loader`` over the sample indices (same generator, same DataLoader)."""
    import torch
    from torch.utils.data import Dataset

    from depthfx.data_parallel import shard_loader

    if isinstance(data, tuple | list) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        data = torch.utils.data.TensorDataset(data[0], torch.as_tensor(data[1]))
    if not (isinstance(data, Dataset) and hasattr(data, "__len__")):
        raise DepthFXError(
            "data-parallel fine-tuning splits a Dataset or an (inputs, labels) pair of tensors "
            f"across the processes, not a {type(data).__name__}"
        )
    n = len(data)
    index = (torch.arange(n), torch.zeros(n))
    order = next(iter(as_loader(index, max(n, 1), shuffle=True, seed=seed, epoch=epoch)))[0]
    return shard_loader(data, batch_size, order.tolist(), group)


def steps_per_epoch(data: Any, batch_size: int) -> int:
    """Number of batches in one pass over ``data``."""
    loader = as_loader(data, batch_size, shuffle=False)
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return sum(1 for _ in loader)


def cosine_lr(lr: float, step: int, total: int) -> float:
    """The original's per-iteration cosine schedule (``adjust_learning_rate``, ``cos``)."""
    return 0.5 * lr * (1.0 + math.cos(math.pi * step / total))


def _device_of(model: nn.Module) -> torch.device:
    import torch

    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def _split_batch(batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    if not isinstance(batch, tuple | list) or len(batch) < 2:
        raise DepthFXError("training data must yield (input, label) pairs")
    return batch[0].to(device), torch.as_tensor(batch[1]).to(device)


def finetune(
    prepared: nn.Module,
    train_data: Any,
    epochs: float = 1,
    lr: float = 0.1,
    distill_from: nn.Module | None = None,
    *,
    steps: int | None = None,
    batch_size: int = 256,
    momentum: float = 0.9,
    weight_decay: float = 1e-5,
    alpha_kd: float = 0.3,
    label_smoothing: float = 0.0,
    grad_clip: float | None = None,
    seed: int = 0,
    checkpoint: PathLike | None = None,
    checkpoint_every: int = 200,
    progress: bool = True,
    channels_last: bool | None = None,
    borders: str = "exact",
    on_step: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """Fine-tune ``prepared`` in place with the paper's recipe; returns it in eval mode.

    ``channels_last`` True/False trains in that memory format, returning the network in the
    default one; None (for a network with 2-d convs) picks the faster: timed on the first batch
    for runs of ``MEASURE_FORMATS_FROM`` steps or more, else channels-last (measured on CPU,
    ``benchmarks/finetune_speed.py``: as fast or faster for the original and every ``borders``
    mode). ``prepared.depthfx_finetune`` records what was used: ``memory_format``,
    ``memory_format_by`` ("argument", "measured", "rule"), ``memory_format_ms`` (the timed
    step per format, when measured), ``borders`` and ``rewritten`` (the convs, or groups, the
    training view changed); the progress bar and the log (``logging.INFO``) say it too.

    ``borders`` (prepared networks; ``training_view``): "exact" trains a view that skips the
    constant ring of the enlarged maps inside merge groups (same function and gradients, fp32
    summation order aside), "full" the prepared network as is, "approximate" (opt-in, NOT exact)
    a view whose convs pad as in the original: about the original's cost, but the merged model
    then differs from the trained one near the borders (``original_padding.border_error``).

    ``epochs`` (may be fractional) or ``steps`` sets the number of iterations t_max. With
    ``distill_from`` (the original model) the loss mixes in the teacher's soft labels with
    weight ``alpha_kd``. ``checkpoint``: a file written every ``checkpoint_every`` steps and at
    the end; if it exists, training resumes from it (and does nothing when it is complete).
    ``on_step(step, loss)`` is called after every step (the loss averaged over the ranks).

    Under ``torchrun --nproc-per-node N`` (or in an initialised torch.distributed group) it
    trains data-parallel (:mod:`depthfx.data_parallel`): DDP, ``batch_size`` the global batch
    split across the ranks, gloo on CPU and nccl on CUDA, progress on rank 0, checkpoints
    written by rank 0 and resumed by every rank, the teacher on every rank.
    """
    import torch
    import torch.nn.functional as F
    from torch import nn
    from tqdm.auto import tqdm

    from depthfx import data_parallel

    if borders not in BORDERS:
        raise DepthFXError(f"borders={borders!r}: use one of {', '.join(map(repr, BORDERS))}")
    group = data_parallel.join(_device_of(prepared))
    device = group.device if group is not None else _device_of(prepared)
    total = steps
    if total is None:
        total = math.ceil(epochs * steps_per_epoch(train_data, batch_size))
    if total < 1:
        raise DepthFXError(f"nothing to train: {total} steps")
    view, changed = training_view(prepared, borders)
    channels_last, format_by, format_ms = _choose_format(
        prepared, view, train_data, channels_last, batch_size, seed, total, group, device
    )
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    format_name = "channels_last" if channels_last else "contiguous"
    prepared.to(memory_format=memory_format)
    net = view if group is None else data_parallel.wrap(view, group)
    params = [p for p in prepared.parameters() if p.requires_grad]
    opt = torch.optim.SGD(
        params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True
    )
    start = 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=True)
        if state["total"] != total:
            raise DepthFXError(f"{ckpt}: checkpoint of a {state['total']}-step run, not {total}")
        prepared.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = int(state["step"])
    if distill_from is not None:
        if group is not None:
            distill_from.to(device)  # the teacher runs on every rank, on its share
        distill_from.eval()
    prepared.train()
    leader = group is None or group.leader
    desc = f"finetune ({format_name}, {format_by})"
    bar = tqdm(total=total, initial=start, desc=desc, unit="step", leave=False,
               disable=None if progress and leader else True)  # fmt: skip
    with bar:
        for step, batch in _batches(train_data, batch_size, seed, start, total, group):
            x, y = _split_batch(batch, device)
            if x.dim() == 4:
                x = x.contiguous(memory_format=memory_format)
            for param_group in opt.param_groups:
                param_group["lr"] = cosine_lr(lr, step, total)
            out = net(x)
            loss = F.cross_entropy(out, y, label_smoothing=label_smoothing)
            if distill_from is not None:
                with torch.no_grad():
                    soft = F.softmax(distill_from(x), dim=1)
                kd = -(soft * F.log_softmax(out, dim=1)).sum(1).mean()
                loss = alpha_kd * kd + (1 - alpha_kd) * loss
            shown = loss.detach() if group is None else data_parallel.mean(loss)
            if not torch.isfinite(shown):
                raise DepthFXError(f"fine-tuning diverged at step {step}: loss {float(shown)}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
            bar.update(1)
            bar.set_postfix(loss=f"{float(shown):.4f}")
            done = step + 1
            if ckpt is not None and (done % checkpoint_every == 0 or done == total):
                if leader:
                    _save(ckpt, prepared, opt, done, total)
                if group is not None:
                    data_parallel.barrier()
            if on_step is not None:
                on_step(step, float(shown))
    if group is not None:
        data_parallel.broadcast_buffers(prepared)
    prepared.to(memory_format=torch.contiguous_format)
    prepared.depthfx_finetune = {
        "memory_format": format_name,
        "memory_format_by": format_by,
        "memory_format_ms": format_ms,
        "borders": borders,
        "rewritten": changed,
    }
    return prepared.eval()


def _choose_format(
    prepared: nn.Module,
    view: nn.Module,
    data: Any,
    channels_last: bool | None,
    batch_size: int,
    seed: int,
    total: int,
    group: Group | None,
    device: torch.device,
) -> tuple[bool, str, dict[str, float] | None]:
    """(channels_last, how it was chosen, ms per format if timed) for ``finetune``; logged."""
    from torch import nn

    by, ms = "argument", None
    if channels_last is None:
        by = "rule"
        channels_last = any(isinstance(m, nn.Conv2d) for m in prepared.modules())
        # a one-shot iterator would lose its first batch to the timing
        reusable = not isinstance(data, Iterator)
        if channels_last and reusable and group is None and total >= MEASURE_FORMATS_FROM:
            first = next(iter(as_loader(data, batch_size, shuffle=True, seed=seed)))
            x, y = _split_batch(first, device)
            if x.dim() == 4:
                by, ms = "measured", time_memory_formats(prepared, view, x, y)
                channels_last = ms["channels_last"] <= ms["contiguous"]
    timed = "" if ms is None else ": " + ", ".join(f"{k} {v:.1f} ms" for k, v in ms.items())
    name = "channels_last" if channels_last else "contiguous"
    logging.getLogger(__name__).info("memory format %s (%s)%s", name, by, timed)
    return channels_last, by, ms


def time_memory_formats(
    prepared: nn.Module, net: nn.Module, x: torch.Tensor, y: torch.Tensor, rounds: int = 2
) -> dict[str, float]:
    """Milliseconds of a training step's forward and backward (cross-entropy, no update) of
    ``net`` (``prepared`` or its training view) on (``x``, ``y``) per memory format: the best
    of ``rounds`` steps, the formats taking turns after a warm-up step each, so that load on
    the machine hits both alike. ``prepared``'s parameters, buffers (BN statistics) and
    gradients, and the random number generator (dropout), are as before."""
    import torch
    import torch.nn.functional as F

    formats = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    state = {k: v.detach().clone() for k, v in prepared.state_dict().items()}
    grads = {p: p.grad for p in prepared.parameters()}
    was_training = prepared.training
    rng = torch.random.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state(x.device) if x.device.type == "cuda" else None
    times: dict[str, list[float]] = {name: [] for name in formats}
    prepared.train()
    try:
        for rnd in range(rounds + 1):
            for name, fmt in formats.items():
                prepared.to(memory_format=fmt)
                xf = x.contiguous(memory_format=fmt)
                _sync(x.device)
                t0 = time.perf_counter()
                F.cross_entropy(net(xf), y).backward()
                _sync(x.device)
                if rnd > 0:
                    times[name].append(1e3 * (time.perf_counter() - t0))
                for p in prepared.parameters():
                    p.grad = None
    finally:
        prepared.to(memory_format=torch.contiguous_format)
        prepared.load_state_dict(state)
        for p, g in grads.items():
            p.grad = g
        prepared.train(was_training)
        torch.random.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, x.device)
    return {name: min(t) for name, t in times.items()}


def _sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_view(prepared: nn.Module, borders: str) -> tuple[nn.Module, int]:
    """The module ``finetune`` runs for ``borders`` (its parameters are ``prepared``'s) and how
    many convs ("exact") or groups ("approximate") it rewrote; any module that is not a
    prepared network trains as is."""
    from depthfx.passes.group_record import PREPARED_ATTR
    from depthfx.passes.original_padding import original_padding_view
    from depthfx.passes.trim_ring import ring_view

    views = {"exact": ring_view, "approximate": original_padding_view}
    if borders not in BORDERS:
        raise DepthFXError(f"borders={borders!r}: use one of {', '.join(map(repr, BORDERS))}")
    if borders == "full" or not hasattr(prepared, PREPARED_ATTR):
        return prepared, 0
    return views[borders](prepared)


def _save(path: Path, model: nn.Module, opt: torch.optim.Optimizer, step: int, total: int) -> None:
    import torch

    from depthfx.io import atomic_path

    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "step": step,
        "total": total,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def evaluate(model: nn.Module, data: Any, batch_size: int = 256) -> tuple[float, float]:
    """(mean cross-entropy, top-1 in percent) of ``model`` in eval mode over ``data``."""
    import torch
    import torch.nn.functional as F

    device = _device_of(model)
    was_training = model.training
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    try:
        with torch.no_grad():
            for batch in as_loader(data, batch_size, shuffle=False):
                x, y = _split_batch(batch, device)
                out = model(x)
                loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
                correct += int((out.argmax(1) == y).sum())
                n += len(y)
    finally:
        model.train(was_training)
    if n == 0:
        raise DepthFXError("the evaluation data yielded no batch")
    return loss_sum / n, 100.0 * correct / n


__all__ = [
    "BORDERS",
    "MEASURE_FORMATS_FROM",
    "as_loader",
    "cosine_lr",
    "evaluate",
    "finetune",
    "steps_per_epoch",
    "time_memory_formats",
    "training_view",
]
