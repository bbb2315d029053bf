"""Digests that identify what an importance table was measured on (model, data, entries, merge
rule): they go into a table's fingerprint and name the caches, so a cache made with other
settings is never mixed in."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch
from torch import nn

from depthfx.solver import ImportanceKey, LatencyTable


def keys_digest(keys: list[ImportanceKey]) -> str:
    """Names a list of entries (in order)."""
    return hashlib.sha256(repr(keys).encode()).hexdigest()[:16]


def latency_digest(latency: LatencyTable) -> str:
    """Names the merge rule of a latency table: its raw entries decide every pattern."""
    entries = sorted((k, round(v, 9)) for k, v in latency.times.items())
    return "fastest:" + hashlib.sha256(repr(entries).encode()).hexdigest()[:16]


def model_hash(model: nn.Module) -> str:
    """SHA-256 (16 hex digits) of the model's state_dict: names, shapes and values."""
    return _tensors_digest(model.state_dict().items())


def data_digest(batches: list[tuple[torch.Tensor, torch.Tensor | None]]) -> str:
    """What identifies the proxy's input data: every batch's values (and labels), in order."""
    return _tensors_digest(("", t) for x, y in batches for t in (x, y) if t is not None)


def _tensors_digest(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    h = hashlib.sha256()
    for name, t in named:
        h.update(name.encode())
        t = t.detach().cpu().contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


__all__ = ["data_digest", "keys_digest", "latency_digest", "model_hash"]
