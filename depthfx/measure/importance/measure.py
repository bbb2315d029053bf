"""``measure_importance``: score every entry of a model with one importance method.

The entries (:func:`~depthfx.measure.importance.entries.entries_of`, this shard's), their merge
rule and the model's digest are resolved here once; the method registered under ``method``
(:mod:`depthfx.measure.importance.methods`) measures them, and its result becomes the table,
with the method's default ``norm``/``alpha`` and a fingerprint of what was measured.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import fx, nn

from depthfx.errors import DepthFXError
from depthfx.io import PathLike
from depthfx.measure.importance.digests import latency_digest, model_hash
from depthfx.measure.importance.entries import entries_of, fastest_merges
from depthfx.measure.importance.heap import reused_heap
from depthfx.measure.importance.methods import ImportanceRequest, importance_method
from depthfx.passes.analyze import analyze
from depthfx.records import Analysis
from depthfx.solver import ImportanceTable, LatencyTable, Norm

#: A registered method's name, or a user score f(prepared_model) -> float.
Method = str | Callable[[fx.GraphModule], float]


def measure_importance(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    data: Any = None,
    method: Method = "proxy",
    *,
    train_data: Any = None,
    val_data: Any = None,
    strided: str = "general",
    exclude: Sequence[str] = (),
    exclude_zeros: bool = True,
    analysis: Analysis | None = None,
    score: str = "auto",
    estimate: str = "fisher",
    bn_recalibration: bool | str | None = None,
    images: int | None = None,
    batch_size: int | None = None,
    norm: Norm | None = None,
    alpha: float | None = None,
    epochs: float = 1,
    steps: int | None = None,
    lr: float = 0.1,
    train_metrics: bool = False,
    cache: PathLike | None = None,
    shard: tuple[int, int] | None = None,
    seed: int = 0,
    threads: int | None = None,
    progress: bool = True,
    latency: LatencyTable | None = None,
    executor: str = "serial",
    executor_options: Mapping[str, Any] | None = None,
) -> ImportanceTable:
    """Score every extended block of ``model`` with ``method``: a registered method's name
    (:mod:`depthfx.measure.importance` lists them) or a callable ``f(prepared_model) -> float``.

    ``data``: the proxy's input data (a tensor of inputs, or an iterable of inputs or
    of (input, label) pairs); without it the proxy runs on random inputs and warns. For
    ``finetune``: ``train_data`` (fine-tuning) and ``val_data`` (held-out, default ``data``),
    each a Dataset, an (inputs, labels) pair of tensors or an iterable of (input, label)
    batches; ``epochs`` (or ``steps``), ``lr`` and ``batch_size`` (default 256) as in the paper.
    ``norm``/``alpha`` default to ``none`` for the proxy and callables, ``single``/1.6 for
    finetune (the paper's MBV2-1.0 setting; re-tune α for other models, spec §7.17).
    ``cache``: a folder for per-entry results (finetune, callable) or, for the Fisher proxy,
    its running sums after every batch (an interrupted table resumes); ``shard=(k, n)`` measures
    only entries k, k+n, k+2n, … (a partial table; merge by running once more on the union of
    the cache folders without ``shard``).

    ``bn_recalibration`` (proxy): re-estimate every entry network's BN statistics on ``data``
    before scoring it (the networks then run to the output; ``estimate`` is not used):
    ``True`` a statistics pass then an evaluation pass (:func:`~depthfx.recalibrate_bn`),
    ``"one-pass"`` both in one pass over all the images at once (each layer's statistics from
    its eval-mode inputs, :func:`~depthfx.measure.bn_recalibration.estimate_bn_in_pass`).

    ``latency``: the model's latency table. Each entry's network then has the merge groups a
    plan with its activations deploys (the fastest merge pattern, :func:`fastest_merges`)
    instead of one group per activation-free segment (the paper's S = A). The paper's groups
    span whole stages in general-stride mode, and their moved padding enlarges every map in
    them: scoring the deployed groups is both more faithful and about 3× cheaper.

    ``executor`` (per-entry methods: finetune, callable): ``"serial"`` (default, here),
    ``"processes"`` or ``"ray"`` with its ``executor_options`` (:mod:`depthfx.executors`); each
    entry keeps its own seed, so every executor gives the serial table at the same thread count.
    """
    if bn_recalibration not in (None, False, True, "one-pass"):
        raise DepthFXError(
            f"bn_recalibration must be True, False, None or 'one-pass', got {bn_recalibration!r}"
        )
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else example_inputs
    inputs = tuple(inputs)
    if analysis is None:
        analysis = analyze(model, inputs, strided=strided, exclude=exclude, training=False)
    if analysis.options.get("training"):
        raise DepthFXError("importance needs an eval-mode analysis (analyze(..., training=False))")
    keys = entries_of(analysis, exclude_zeros)
    if not keys:
        raise DepthFXError("the model has no conv chain: there is nothing to score")
    if shard is not None:
        k, n = shard
        if not (n >= 1 and 0 <= k < n):
            raise DepthFXError(f"shard must be (k, n) with 0 <= k < n, got {shard}")
        keys = keys[k::n]
    default_acts = {c.index: sorted(c.activations) for c in analysis.chains}
    merges = None if latency is None else fastest_merges(analysis, latency)
    merge_id = None if latency is None else latency_digest(latency)
    model_id = model_hash(model)
    name, function = ("callable", method) if callable(method) else (method, None)
    chosen = importance_method(name)
    if executor != "serial" and not chosen.per_entry:
        raise DepthFXError(
            f"method {name!r} measures all entries together; executor={executor!r} runs "
            "per-entry methods only (finetune, callable)"
        )
    request = ImportanceRequest(
        model=model, analysis=analysis, keys=keys, merges=merges, merge_id=merge_id,
        model_id=model_id, function=function, data=data, train_data=train_data,
        val_data=val_data, score=score, estimate=estimate, bn_recalibration=bn_recalibration,
        images=images, batch_size=batch_size,
        epochs=epochs, steps=steps, lr=lr, train_metrics=train_metrics, cache=cache, seed=seed,
        progress=progress, executor=executor, executor_options=executor_options,
    )  # fmt: skip
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with reused_heap():  # large activations reuse mapped pages (same values, less CPU)
            result = chosen.run(request)
    finally:
        torch.set_num_threads(old_threads)
    norm, alpha = norm or chosen.norm, chosen.alpha if alpha is None else alpha
    scores, columns, metrics = result.scores, result.columns, result.metrics
    merge_fp = {} if merge_id is None else {"merges": merge_id}
    if isinstance(result.meta.get("base"), dict):
        result.meta["base"] = {k: _null_nan(v) for k, v in result.meta["base"].items()}
    meta = {
        **result.meta,
        "fingerprint": {**result.meta.get("fingerprint", {}), "model": model_id, **merge_fp},
        "strided": analysis.options["strided"],
        "exclude": list(analysis.options["exclude"]),
        "exclude_zeros": exclude_zeros,
        "shard": list(shard) if shard else None,
        "columns": list(columns),
        "metrics": [[*k, *map(_null_nan, metrics[k])] for k in keys],
    }
    return ImportanceTable(
        {k: scores[k] for k in keys},
        score=columns[0],
        norm=norm,
        alpha=alpha,
        default_acts=default_acts,
        meta=meta,
    )


#: The proxy ``plan``/``compile``/``depthfx table importance`` run when data is given and the
#: caller chose no estimate: BN re-estimated in one pass on this many images. It ranks entries
#: like the paper's per-entry fine-tune far better than the Fisher proxy, as the two-pass
#: estimate does, at 0.68× its cost (README, Accuracy before and after fine-tuning): less than
#: the Fisher proxy's default table (256 images) on MobileNetV2 224×224.
BN_DEFAULT: bool | str = "one-pass"
BN_IMAGES = 16


def default_options(data: Any, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``options`` for :func:`measure_importance` with the default estimate filled in: with
    ``data`` and none of ``bn_recalibration``/``estimate`` given, BN re-estimation
    (:data:`BN_DEFAULT`) on :data:`BN_IMAGES` images unless ``images`` is given. Without data
    (random inputs: no statistics to re-estimate), or when the caller chose, it is unchanged;
    ``bn_recalibration=False`` or ``estimate="fisher"`` keeps the Fisher proxy."""
    opts = dict(options or {})
    chosen = opts.get("bn_recalibration") is not None or opts.get("estimate") is not None
    if data is not None and opts.get("method", "proxy") == "proxy" and not chosen:
        opts["bn_recalibration"] = BN_DEFAULT
        if opts.get("images") is None:
            opts["images"] = BN_IMAGES
    return opts


def _null_nan(value: Any) -> Any:
    """Metrics that were not measured (NaN) are null: a table's JSON holds finite numbers."""
    return None if isinstance(value, float) and math.isnan(value) else value


__all__ = ["BN_DEFAULT", "BN_IMAGES", "Method", "default_options", "measure_importance"]
