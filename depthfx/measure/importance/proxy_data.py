"""The proxy's input data: the batches every entry's network runs on.

Up to ``images`` inputs (and labels) from the user's data, re-batched and in channels-last; or,
without data, random inputs of the example's shape with a loud warning (the scores then say
little about real inputs).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch

from depthfx.errors import DepthFXError
from depthfx.measure.importance.networks import fast_copy
from depthfx.records import Analysis

#: Images the proxy runs on: with data / with random inputs.
PROXY_IMAGES = 256
RANDOM_IMAGES = 8

#: Proxy batches: (inputs, labels or None).
Batches = list[tuple[torch.Tensor, torch.Tensor | None]]


def proxy_batches(
    data: Any, example: torch.Tensor, images: int | None, batch_size: int, seed: int
) -> tuple[Batches, bool]:
    """Up to ``images`` inputs (and labels) from ``data``, re-batched; random inputs of the
    example's shape (with a loud warning) without data. Returns (batches, is_random)."""
    if data is None:
        n = images or RANDOM_IMAGES
        msg = (
            f"importance proxy without data: scoring on {n} random inputs of shape "
            f"{tuple(example.shape[1:])}; pass the proxy's input data (data=... or --data) for "
            "meaningful scores"
        )
        # stacklevel: the caller of measure_importance (through proxy_inputs, the estimate and
        # the proxy method)
        warnings.warn(msg, UserWarning, stacklevel=6)
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn((n, *example.shape[1:]), generator=gen, dtype=example.dtype)
        return [(x[i : i + batch_size], None) for i in range(0, n, batch_size)], True
    limit = images or PROXY_IMAGES
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    count = 0
    items: Iterable[Any] = [data] if isinstance(data, torch.Tensor) else data
    for item in items:
        x, y = (item[0], item[1]) if isinstance(item, tuple | list) else (item, None)
        x = torch.as_tensor(x)
        if x.dim() == example.dim() - 1:
            x = x.unsqueeze(0)
            y = None if y is None else torch.as_tensor(y).reshape(1)
        if x.dim() != example.dim():
            raise DepthFXError(
                f"proxy input of shape {tuple(x.shape)} does not match the example input "
                f"{tuple(example.shape)}"
            )
        if (y is None) != (not ys) and xs:
            raise DepthFXError("the proxy's input data mixes labelled and unlabelled items")
        xs.append(x)
        if y is not None:
            ys.append(torch.as_tensor(y).reshape(-1))
        count += len(x)
        if count >= limit:
            break
    if not xs:
        raise DepthFXError("the proxy's input data is empty")
    x_all = torch.cat(xs)[:limit].to(example.dtype)
    y_all = torch.cat(ys)[:limit] if ys else None
    return [
        (x_all[i : i + batch_size], None if y_all is None else y_all[i : i + batch_size])
        for i in range(0, len(x_all), batch_size)
    ], False


def proxy_inputs(
    analysis: Analysis, data: Any, images: int | None, batch_size: int, seed: int
) -> tuple[Analysis, Batches, bool]:
    """(the fast copy of the analysis, the proxy's batches in channels-last, is_random)."""
    if len(analysis.example_shapes) != 1:
        raise DepthFXError("the importance proxy supports models with one input tensor")
    example = torch.zeros(analysis.example_shapes[0])
    batches, is_random = proxy_batches(data, example, images, batch_size, seed)
    batches = [
        (x.to(memory_format=torch.channels_last) if x.dim() == 4 else x, y) for x, y in batches
    ]
    return fast_copy(analysis), batches, is_random


__all__ = ["PROXY_IMAGES", "RANDOM_IMAGES", "Batches", "proxy_batches", "proxy_inputs"]
