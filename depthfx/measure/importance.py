"""Importance tables: one score per extended block (chain, st, end, st_act, end_act), spec §3.

Three ways to score an entry, all on "the network with that block merged": the model prepared
as the paper's ``fix_act(new_A)`` (spec §3.2), A = (default \\ {p : st < p < end}) ∪ ({st} if
st_act) ∪ ({end} if end_act) and S = A ∪ barriers (closed under the residual rule), every
other chain keeping its original pattern. The reference is the base network, the original
pattern prepared the same way (spec §3.2 step 1; for the usual models it is the original network
bit for bit), so an entry that changes no activation scores exactly 0. (S = A ∪ {st, end} would
move paddings differently from the base even for unchanged entries.)

* ``proxy`` (default, no training): eval-mode outputs of each entry's network on calibration
  data against the base network's; score −KL(softmax(base) ‖ softmax(entry)) for classifiers,
  −relative MSE otherwise, Δ top-1 in percentage points when labels are given (exact estimate
  only). Built from ONE eval capture: per entry only the graph is edited (with ``prepare``'s
  own chain rewrite, so it is exactly the prepared network, padding moves included). Two
  estimates: ``estimate="fisher"`` (default, :mod:`depthfx.measure.fisher`) runs only each
  entry's changed region (all regions as one graph with their common nodes computed once,
  :mod:`depthfx.measure.shared_regions`) and takes the rest of the network to second order
  from base-network gradients; ``estimate="exact"`` runs every entry's network to the output,
  grouped by the last merge boundary q <= st: the network up to position q is identical for
  all of them (checked node by node), so it runs once per batch and group, and each entry runs
  only from q onward.
* ``finetune``: the paper's experiment (spec §3.2): per entry a prepared copy, single-layer
  blocks re-initialised, fine-tuned with :func:`depthfx.finetune` (SGD, Nesterov, cosine per
  iteration), scored by the change in held-out top-1 (percentage points). Per-entry results are
  cached on disk (atomic JSON files), so an interrupted run resumes; ``shard=(k, n)`` splits
  the entries across machines.
* a callable ``f(prepared_model) -> float``: any user score, cached and sharded the same way.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx._lazy_graph_module import _LazyGraphModule
from torch.utils import _pytree as pytree

from depthfx.errors import DepthFXError, TableError
from depthfx.io import atomic_write
from depthfx.measure.fisher import (
    FISHER_SAMPLES,
    FisherScores,
    RegionFinder,
    signature,
    with_values,
)
from depthfx.measure.proxy_checkpoint import ProxyCheckpoint
from depthfx.measure.shared_regions import SharedRegions
from depthfx.passes.analyze import analyze
from depthfx.passes.fold_bn import fold_bn_modules
from depthfx.passes.prepare import prepare, rewrite_chain
from depthfx.plans import Plan, chain_plan
from depthfx.records import Analysis, Chain
from depthfx.solver import (
    ImportanceKey,
    ImportanceTable,
    LatencyTable,
    Norm,
    csv_text,
    optimal_merge_pattern,
)

Method = str | Callable[[fx.GraphModule], float]
PathLike = str | os.PathLike[str]

#: Calibration images used by the proxy: with data / with random inputs.
PROXY_IMAGES = 256
RANDOM_IMAGES = 8
#: Images per Fisher-proxy batch: its gradient draws are four times the activations, and on
#: CPU batches of 8 run them 1.3× faster than batches of 32 (cache and page-fault bound).
FISHER_BATCH = 8
#: Raw ``importance.csv`` metric columns of the paper (spec §3.2).
PAPER_COLUMNS = ("train_loss", "train_acc", "val_loss", "val_acc")


# ----------------------------------------------------------------------------- entries, plans


def entries_of(analysis: Analysis, exclude_zeros: bool = True) -> list[ImportanceKey]:
    """Every extended block of every chain, keyed (chain, st, end, st_act, end_act), in the
    solver's order."""
    return [
        (chain.index, *blk)
        for chain in analysis.chains
        for blk in chain.extended_blocks(exclude_zeros=exclude_zeros)
    ]


#: Merge boundaries S of a chain's network for its kept activations A: (chain index, A) → S.
MergeRule = Callable[[int, frozenset[int]], set[int]]


def fastest_merges(analysis: Analysis, latency: LatencyTable) -> MergeRule:
    """S = the fastest merge pattern for A on ``latency`` (spec §4.5): the network a plan with
    those activations deploys. Checked against the analysis; memoised (the base pattern of
    every other chain repeats in every entry)."""
    for chain in analysis.chains:
        if latency.lengths.get(chain.index) != chain.num_convs:
            raise DepthFXError(
                f"the latency table does not match the model: chain {chain.index} has "
                f"{chain.num_convs} convs, the table {latency.lengths.get(chain.index)}"
            )
    memo: dict[tuple[int, frozenset[int]], set[int]] = {}

    def merges(chain: int, act: frozenset[int]) -> set[int]:
        if (chain, act) not in memo:
            memo[chain, act] = set(optimal_merge_pattern(act, latency, chain).merge_pos)
        return memo[chain, act]

    return merges


def entry_plan(
    analysis: Analysis, key: ImportanceKey | None, merges: MergeRule | None = None
) -> Plan:
    """The plan of one entry's network (``key=None``: the base network, original pattern).

    Merge groups: S = A, the paper's ``fix_act(new_A)`` (spec §3.2), unless ``merges`` gives S
    for A (:func:`fastest_merges`: the groups a deployed plan would have). The groups decide
    where paddings move, so they change the network at the borders."""
    chains = []
    for chain in analysis.chains:
        act = set(chain.activations)
        if key is not None and chain.index == key[0]:
            _, st, end, st_act, end_act = key
            act = {p for p in act if not st < p < end}
            act |= ({st} if st_act else set()) | ({end} if end_act else set())
            act.discard(0)
        groups = act if merges is None else merges(chain.index, frozenset(act))
        merge = groups | set(chain.barriers) | {chain.num_convs}
        chains.append(chain_plan([c.node for c in chain.convs], act, chain.close_residuals(merge)))
    return Plan.for_analysis(analysis, chains)


# ----------------------------------------------------------------------------- public entry


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
) -> ImportanceTable:
    """Score every extended block of ``model``; see the module docstring for the methods.

    ``data``: calibration data for the proxy (a tensor of inputs, or an iterable of inputs or
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

    ``latency``: the model's latency table. Each entry's network then has the merge groups a
    plan with its activations deploys (the fastest merge pattern, :func:`fastest_merges`)
    instead of one group per activation-free segment (the paper's S = A). The paper's groups
    span whole stages in general-stride mode, and their moved padding enlarges every map in
    them: scoring the deployed groups is both more faithful and about 3× cheaper.
    """
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
    merge_id = None if latency is None else _latency_digest(latency)
    model_id = model_hash(model)
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        if method == "proxy":
            if estimate == "fisher":
                scores, columns, metrics, meta = _fisher_proxy(
                    analysis, keys, data, merges, score=score, images=images,
                    batch_size=batch_size or FISHER_BATCH, seed=seed, progress=progress,
                    cache=cache, identity={
                        "model": model_id, "merges": merge_id, "strided":
                        analysis.options["strided"], "entries": _keys_digest(keys),
                    },
                )  # fmt: skip
            elif estimate == "exact":
                scores, columns, metrics, meta = _proxy(
                    analysis, keys, data, merges, score=score, images=images,
                    batch_size=batch_size or 64, seed=seed, progress=progress,
                )  # fmt: skip
            else:
                raise DepthFXError(f"unknown estimate {estimate!r}: use 'fisher' or 'exact'")
            norm, alpha = norm or "none", 1.0 if alpha is None else alpha
        elif method == "finetune":
            from depthfx.measure.experiments import finetune_experiment

            if val_data is None:
                val_data = data
            if train_data is None or val_data is None:
                raise DepthFXError(
                    "method='finetune' needs train_data (to fine-tune on) and val_data or data "
                    "(held-out, to score on)"
                )
            experiment = finetune_experiment(
                train_data, val_data, epochs=epochs, steps=steps, lr=lr,
                batch_size=batch_size or 256, train_metrics=train_metrics, seed=seed,
                progress=progress,
            )  # fmt: skip
            scores, columns, metrics, meta = _run_experiments(
                model, analysis, keys, experiment, merges, merge_id, cache=cache, progress=progress
            )
            norm, alpha = norm or "single", 1.6 if alpha is None else alpha
        elif callable(method):
            from depthfx.measure.experiments import callable_experiment

            scores, columns, metrics, meta = _run_experiments(
                model, analysis, keys, callable_experiment(method), merges, merge_id,
                cache=cache, progress=progress,
            )  # fmt: skip
            norm, alpha = norm or "none", 1.0 if alpha is None else alpha
        else:
            raise DepthFXError(f"unknown method {method!r}: use 'proxy', 'finetune' or a callable")
    finally:
        torch.set_num_threads(old_threads)
    merge_fp = {} if merge_id is None else {"merges": merge_id}
    meta = {
        **meta,
        "fingerprint": {**meta.get("fingerprint", {}), "model": model_id, **merge_fp},
        "strided": analysis.options["strided"],
        "exclude": list(analysis.options["exclude"]),
        "exclude_zeros": exclude_zeros,
        "shard": list(shard) if shard else None,
        "columns": list(columns),
        "metrics": [[*k, *metrics[k]] for k in keys],
    }
    return ImportanceTable(
        {k: scores[k] for k in keys},
        score=columns[0],
        norm=norm,
        alpha=alpha,
        default_acts=default_acts,
        meta=meta,
    )


def _keys_digest(keys: list[ImportanceKey]) -> str:
    return hashlib.sha256(repr(keys).encode()).hexdigest()[:16]


def _latency_digest(latency: LatencyTable) -> str:
    """Names the merge rule of a latency table: its raw entries decide every pattern."""
    entries = sorted((k, round(v, 9)) for k, v in latency.times.items())
    return "fastest:" + hashlib.sha256(repr(entries).encode()).hexdigest()[:16]


def model_hash(model: nn.Module) -> str:
    """SHA-256 (16 hex digits) of the model's state_dict: names, shapes and values."""
    return _tensors_digest(model.state_dict().items())


def data_digest(batches: list[tuple[torch.Tensor, torch.Tensor | None]]) -> str:
    """What identifies the calibration data: every batch's values (and labels), in order."""
    return _tensors_digest(("", t) for x, y in batches for t in (x, y) if t is not None)


def _tensors_digest(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    h = hashlib.sha256()
    for name, t in named:
        h.update(name.encode())
        t = t.detach().cpu().contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- calibration data


def calibration_batches(
    data: Any, example: torch.Tensor, images: int | None, batch_size: int, seed: int
) -> tuple[list[tuple[torch.Tensor, torch.Tensor | None]], bool]:
    """Up to ``images`` inputs (and labels) from ``data``, re-batched; random inputs of the
    example's shape (with a loud warning) without data. Returns (batches, is_random)."""
    if data is None:
        n = images or RANDOM_IMAGES
        msg = (
            f"importance proxy without data: scoring on {n} random inputs of shape "
            f"{tuple(example.shape[1:])}; pass calibration data (data=... or --data) for "
            "meaningful scores"
        )
        warnings.warn(msg, UserWarning, stacklevel=5)
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
                f"calibration input of shape {tuple(x.shape)} does not match the example input "
                f"{tuple(example.shape)}"
            )
        if (y is None) != (not ys) and xs:
            raise DepthFXError("calibration data mixes labelled and unlabelled items")
        xs.append(x)
        if y is not None:
            ys.append(torch.as_tensor(y).reshape(-1))
        count += len(x)
        if count >= limit:
            break
    if not xs:
        raise DepthFXError("calibration data is empty")
    x_all = torch.cat(xs)[:limit].to(example.dtype)
    y_all = torch.cat(ys)[:limit] if ys else None
    return [
        (x_all[i : i + batch_size], None if y_all is None else y_all[i : i + batch_size])
        for i in range(0, len(x_all), batch_size)
    ], False


# ----------------------------------------------------------------------------- proxy


def _linear_node(analysis: Analysis, chain: Chain, p: int) -> str:
    """Name of the node holding position p before its activation (as ``prepare`` sees it)."""
    if p == 0:
        return chain.input_node
    slot = chain.activations.get(p)
    if slot is None:
        return chain.position_nodes[p]
    if slot.kind == "norm_act":
        return slot.node
    node = next(n for n in analysis.graph_module.graph.nodes if n.name == slot.node)
    arg = node.args[0] if node.args else node.kwargs.get("input")
    return arg.name


def build_network(analysis: Analysis, plan: Plan) -> fx.GraphModule:
    """The eval-mode prepared network of ``plan`` built on the analysis's eval capture.

    It runs ``prepare``'s own chain rewrite on a copy of the graph, so it is the network
    ``prepare(model, plan).eval()`` computes; leaf modules are shared with the model (the
    BN+act modules the rewrite edits are copied first), so it costs milliseconds. Its Python
    code is generated on its first call only (a lazy GraphModule): the proxy reads most of
    these networks as graphs and never runs them.
    """
    base = analysis.graph_module
    gm = _LazyGraphModule(base, copy.deepcopy(base.graph), type(base).__name__)
    for chain in analysis.chains:
        for slot in chain.activations.values():
            if slot.kind == "norm_act" and slot.module:
                parent, _, _ = slot.module.rpartition(".")
                owner, _, leaf = parent.rpartition(".")
                setattr(
                    gm.get_submodule(owner) if owner else gm,
                    leaf,
                    copy.deepcopy(gm.get_submodule(parent)),
                )
    nodes = {n.name: n for n in gm.graph.nodes}
    for index, (chain, cplan) in enumerate(zip(analysis.chains, plan.chains, strict=True)):
        cplan.validate(chain.barriers, [(r.src, r.dst) for r in chain.residuals])
        rewrite_chain(gm, nodes, index, chain, cplan)
    gm.graph.lint()
    gm.recompile()
    return gm.eval()


def _ancestors(gm: fx.GraphModule, name: str) -> set[str]:
    nodes = {n.name: n for n in gm.graph.nodes}
    seen = {name}
    stack = [nodes[name]]
    while stack:
        for arg in stack.pop().all_input_nodes:
            if arg.name not in seen:
                seen.add(arg.name)
                stack.append(arg)
    return seen


def _split(
    gm: fx.GraphModule, prefix: set[str], frontier: list[str], outputs: bool
) -> fx.GraphModule:
    """``outputs=True``: the prefix network returning the frontier values; else the rest of
    the network taking them as inputs (followed by the original inputs outside the prefix)."""
    gm = fx.GraphModule(gm, copy.deepcopy(gm.graph), type(gm).__name__)
    graph = gm.graph
    nodes = {n.name: n for n in graph.nodes}
    if outputs:
        out = next(n for n in graph.nodes if n.op == "output")
        with graph.inserting_before(out):
            graph.output(tuple(nodes[f] for f in frontier))
        graph.erase_node(out)
        gm.graph.eliminate_dead_code()
    else:
        first = next(iter(graph.nodes))
        with graph.inserting_before(first):
            holders = [graph.placeholder(f"frontier_{i}") for i in range(len(frontier))]
        for name, holder in zip(frontier, holders, strict=True):
            nodes[name].replace_all_uses_with(holder)
        for node in reversed(list(graph.nodes)):
            if node.name in prefix and node not in holders:
                graph.erase_node(node)
    graph.lint()
    gm.recompile()
    return gm.eval()


class _Stats:
    """Running sums of one entry's divergence from the base network."""

    def __init__(self) -> None:
        self.kl = 0.0
        self.sq_err = 0.0
        self.sq_ref = 0.0
        self.correct = 0
        self.n = 0

    def add(self, ref: list[torch.Tensor], out: list[torch.Tensor], y: torch.Tensor | None) -> None:
        if len(ref) != len(out):
            raise DepthFXError("an entry's network returns a different number of outputs")
        for r, o in zip(ref, out, strict=True):
            r64, o64 = r.double(), o.double()
            self.sq_err += float(((o64 - r64) ** 2).sum())
            self.sq_ref += float((r64**2).sum())
        if _is_classifier(ref):
            log_p = F.log_softmax(ref[0].double(), dim=1)
            log_q = F.log_softmax(out[0].double(), dim=1)
            self.kl += float((log_p.exp() * (log_p - log_q)).sum())
            if y is not None:
                self.correct += int((out[0].argmax(1) == y).sum())
        self.n += len(ref[0])

    def state(self) -> list[float]:
        return [self.kl, self.sq_err, self.sq_ref, self.correct, self.n]

    @classmethod
    def from_state(cls, state: list[float]) -> _Stats:
        stats = cls()
        stats.kl, stats.sq_err, stats.sq_ref = state[:3]
        stats.correct, stats.n = int(state[3]), int(state[4])
        return stats


def _is_classifier(outputs: list[torch.Tensor]) -> bool:
    return len(outputs) == 1 and outputs[0].dim() == 2


def _leaves(out: Any) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def _fast_copy(analysis: Analysis) -> Analysis:
    """The analysis on a private eval-mode channels-last copy of its modules with BN folded
    into the convs: the proxy's networks run about 3× (channels-last) and 1.5× (folded BN)
    faster on CPU, and the user's model is never touched. Its parameters need no gradients,
    so the Fisher proxy's backward passes compute activation gradients only."""
    gm = copy.deepcopy(analysis.graph_module).eval().requires_grad_(False)
    fold_bn_modules(gm)
    gm = gm.to(memory_format=torch.channels_last)
    return dataclasses.replace(analysis, graph_module=gm)


def _proxy_inputs(
    analysis: Analysis, data: Any, images: int | None, batch_size: int, seed: int
) -> tuple[Analysis, list[tuple[torch.Tensor, torch.Tensor | None]], bool]:
    """(the fast copy of the analysis, calibration batches in channels-last, is_random)."""
    if len(analysis.example_shapes) != 1:
        raise DepthFXError("the importance proxy supports models with one input tensor")
    example = torch.zeros(analysis.example_shapes[0])
    batches, is_random = calibration_batches(data, example, images, batch_size, seed)
    batches = [
        (x.to(memory_format=torch.channels_last) if x.dim() == 4 else x, y) for x, y in batches
    ]
    return _fast_copy(analysis), batches, is_random


def _check_score(score: str, classifier: bool, labelled: bool, estimate: str) -> str:
    if score == "auto":
        if estimate == "fisher":
            return "kl" if classifier else "mse"
        return "accuracy" if labelled and classifier else "kl" if classifier else "mse"
    if score not in ("kl", "mse", "accuracy"):
        raise DepthFXError(f"unknown proxy score {score!r}: use auto, kl, mse or accuracy")
    if score in ("kl", "accuracy") and not classifier:
        raise DepthFXError(f"score {score!r} needs a classifier (one (N, classes) output)")
    if score == "accuracy" and not labelled:
        raise DepthFXError("score 'accuracy' needs labelled calibration data (input, label)")
    if score == "accuracy" and estimate == "fisher":
        raise DepthFXError(
            "score 'accuracy' has no second-order estimate: use estimate='exact' "
            "(--estimate exact) or score 'kl'"
        )
    return score


def _fisher_proxy(
    analysis: Analysis,
    keys: list[ImportanceKey],
    data: Any,
    merges: MergeRule | None,
    *,
    score: str,
    images: int | None,
    batch_size: int,
    seed: int,
    progress: bool,
    cache: PathLike | None = None,
    identity: dict[str, Any] | None = None,
) -> tuple[dict[ImportanceKey, float], list[str], dict[ImportanceKey, list[float]], dict[str, Any]]:
    """The second-order proxy of :mod:`depthfx.measure.fisher`. With ``cache``, its running
    sums are saved after every batch and a later run with the same settings (``identity``:
    model, entries, merge groups; and the data, seed, batch size, score) resumes from them."""
    analysis, batches, is_random = _proxy_inputs(analysis, data, images, batch_size, seed)
    labelled = batches[0][1] is not None
    generator = torch.Generator().manual_seed(seed)
    fisher: FisherScores | None = None
    exact: dict[ImportanceKey, _Stats] = {}
    done = 0
    checkpoint = None
    if cache is not None:
        settings = {**(identity or {}), "data": data_digest(batches), "batch_size": batch_size,
                    "seed": seed, "score": score, "samples": FISHER_SAMPLES}  # fmt: skip
        checkpoint = ProxyCheckpoint(cache, settings)
        saved = checkpoint.load()
        if saved is not None:
            done = saved["batches"]
            fisher = FisherScores.from_state(saved["fisher"])
            exact = {tuple(row[:5]): _Stats.from_state(row[5:]) for row in saved["exact"]}
            generator.set_state(torch.tensor(saved["generator"], dtype=torch.uint8))
    if done < len(batches):
        fisher, exact = _fisher_batches(
            analysis, keys, merges, batches, done, generator, fisher, exact, checkpoint,
            score=score, labelled=labelled, progress=progress,
        )  # fmt: skip
    assert fisher is not None
    score = "kl" if fisher.classifier else "mse"
    column = "neg_kl" if score == "kl" else "neg_rel_mse"
    scores = {}
    for key in keys:
        if key in exact:
            st_ = exact[key]
            if score == "kl":
                value = -st_.kl / st_.n
            else:
                value = -st_.sq_err / fisher.sq_ref if fisher.sq_ref > 0 else -st_.sq_err
            scores[key] = value + 0.0
        else:
            scores[key] = fisher.score(key)
    meta = {
        "method": "proxy",
        "fingerprint": {
            "method": "proxy",
            "estimate": "fisher",
            "samples": FISHER_SAMPLES,
            "score": score,
            "images": sum(len(x) for x, _ in batches),
            "random_inputs": is_random,
            "seed": seed,
        },
        "exact_entries": len(exact),
    }
    return scores, [column], {k: [v] for k, v in scores.items()}, meta


def _fisher_batches(
    analysis: Analysis,
    keys: list[ImportanceKey],
    merges: MergeRule | None,
    batches: list[tuple[torch.Tensor, torch.Tensor | None]],
    done: int,
    generator: torch.Generator,
    fisher: FisherScores | None,
    exact: dict[ImportanceKey, _Stats],
    checkpoint: ProxyCheckpoint | None,
    *,
    score: str,
    labelled: bool,
    progress: bool,
) -> tuple[FisherScores, dict[ImportanceKey, _Stats]]:
    """Find every entry's region, then run batches ``done``… and accumulate the sums."""
    from tqdm.auto import tqdm

    base = build_network(analysis, entry_plan(analysis, None, merges))
    stable = {n.name for n in analysis.graph_module.graph.nodes}
    find_region = RegionFinder(base, stable)
    regions = {
        key: find_region(build_network(analysis, entry_plan(analysis, key, merges)))
        for key in tqdm(keys, desc="importance (regions)", unit="entry",
                        disable=None if progress else True)
    }  # fmt: skip
    names = sorted({n for r in regions.values() for n in (*r.inputs, *r.outputs)})
    frontier = sorted({n for r in regions.values() if not r.exact for n in r.outputs})
    net = with_values(base, names)
    exact = exact or {k: _Stats() for k, r in regions.items() if r.exact}
    shared = SharedRegions(regions)
    bar = tqdm(total=len(shared) * len(batches), initial=len(shared) * done, unit="run",
               desc="importance (proxy)", disable=None if progress else True)  # fmt: skip
    with bar:
        for index in range(done, len(batches)):
            x, y = batches[index]
            with torch.enable_grad():
                out, found = net(x.detach().requires_grad_(True))
                outputs = _leaves(out)
                if fisher is None:
                    score = _check_score(score, _is_classifier(outputs), labelled, "fisher")
                    fisher = FisherScores(regions, score == "kl")
                values = dict(zip(names, found, strict=True))
                draws = (
                    fisher.gradients(
                        outputs, [values[f] for f in frontier], FISHER_SAMPLES, generator
                    )
                    if frontier
                    else []
                )
            grads = dict(zip(frontier, draws, strict=True))
            values = {n: v.detach() for n, v in values.items()}
            outputs = [o.detach() for o in outputs]
            fisher.add_reference(outputs)
            with torch.no_grad():
                for key, result in shared.run(values):
                    region = regions[key]
                    if region.exact:
                        exact[key].add([values[o] for o in region.outputs], result, y)
                    else:
                        deltas = [
                            r - values[o] for r, o in zip(result, region.outputs, strict=True)
                        ]
                        fisher.add(key, deltas, [grads[o] for o in region.outputs])
                    bar.update(1)
            if checkpoint is not None:
                checkpoint.save({
                    "batches": index + 1,
                    "fisher": fisher.state(),
                    "exact": [[*k, *st.state()] for k, st in exact.items()],
                    "generator": generator.get_state().tolist(),
                })  # fmt: skip
    assert fisher is not None
    return fisher, exact


def _proxy(
    analysis: Analysis,
    keys: list[ImportanceKey],
    data: Any,
    merges: MergeRule | None,
    *,
    score: str,
    images: int | None,
    batch_size: int,
    seed: int,
    progress: bool,
) -> tuple[dict[ImportanceKey, float], list[str], dict[ImportanceKey, list[float]], dict[str, Any]]:
    from tqdm.auto import tqdm

    analysis, batches, is_random = _proxy_inputs(analysis, data, images, batch_size, seed)
    labelled = batches[0][1] is not None
    chains = {c.index: c for c in analysis.chains}
    with torch.inference_mode():
        base = build_network(analysis, entry_plan(analysis, None, merges))
        refs = [_leaves(base(x)) for x, _ in batches]
    classifier = _is_classifier(refs[0])
    score = _check_score(score, classifier, labelled, "exact")
    base_correct = sum(
        int((r[0].argmax(1) == y).sum()) for r, (_, y) in zip(refs, batches, strict=True)
    ) if labelled and classifier else 0  # fmt: skip

    # Entries whose networks agree up to the last boundary q <= st (same chain, q, boundaries
    # and activations before q) share that prefix: it runs once per batch and group.
    groups: dict[tuple[Any, ...], list[ImportanceKey]] = {}
    plans = {k: entry_plan(analysis, k, merges) for k in keys}
    for key in keys:
        cplan = plans[key].chains[[c.index for c in analysis.chains].index(key[0])]
        q = max([p for p in cplan.merge_pos if p <= key[1]] + [0])
        bounds = tuple(p for p in cplan.merge_pos if p <= q)
        acts = tuple(p for p in cplan.act_pos if p < q)
        groups.setdefault((key[0], q, bounds, acts), []).append(key)
    stats = {k: _Stats() for k in keys}
    bar = tqdm(
        total=len(keys) * len(batches), desc="importance (proxy)", unit="run",
        disable=None if progress else True,
    )  # fmt: skip
    with torch.inference_mode(), bar:
        for (c, q, _, _), group in groups.items():
            cut = _linear_node(analysis, chains[c], q)
            nets = [build_network(analysis, plans[k]) for k in group]
            prefix = _ancestors(nets[0], cut)
            sig = {n.name: signature(nets[0], n) for n in nets[0].graph.nodes if n.name in prefix}
            frontier: set[str] = set()
            for net in nets:
                for n in net.graph.nodes:
                    if n.name in prefix:
                        if signature(net, n) != sig.get(n.name):
                            raise DepthFXError(f"internal: entries {group} differ before {q}")
                        if any(u.name not in prefix for u in n.users):
                            frontier.add(n.name)
            order = sorted(frontier)
            head = _split(nets[0], prefix, order, outputs=True)
            tails = [_split(net, prefix, order, outputs=False) for net in nets]
            for (x, y), ref in zip(batches, refs, strict=True):
                values = head(x)
                for key, tail in zip(group, tails, strict=True):
                    stats[key].add(ref, _leaves(tail(*values)), y)
                    bar.update(1)
    columns: list[str] = []
    metrics: dict[ImportanceKey, list[float]] = {k: [] for k in keys}
    names = {"accuracy": "val_acc", "kl": "neg_kl", "mse": "neg_rel_mse"}
    order_cols = [score] + [s for s in ("accuracy", "kl", "mse") if s != score]
    for s in order_cols:
        if (s == "accuracy" and not (labelled and classifier)) or (s == "kl" and not classifier):
            continue
        columns.append(names[s])
        for k in keys:
            st_ = stats[k]
            if s == "accuracy":
                value = 100.0 * (st_.correct - base_correct) / st_.n
            elif s == "kl":
                value = -st_.kl / st_.n
            else:
                value = -st_.sq_err / st_.sq_ref if st_.sq_ref > 0 else -st_.sq_err
            metrics[k].append(value + 0.0)  # + 0.0 turns -0.0 into 0.0
    scores = {k: metrics[k][0] for k in keys}
    n_images = sum(len(x) for x, _ in batches)
    meta = {
        "method": "proxy",
        "fingerprint": {
            "method": "proxy",
            "score": score,
            "images": n_images,
            "random_inputs": is_random,
            "seed": seed,
        },
    }
    return scores, columns, metrics, meta


# ----------------------------------------------------------------------------- experiments


def _run_experiments(
    model: nn.Module,
    analysis: Analysis,
    keys: list[ImportanceKey],
    experiment: Any,
    merges: MergeRule | None,
    merge_id: str | None,
    *,
    cache: PathLike | None,
    progress: bool,
) -> tuple[dict[ImportanceKey, float], list[str], dict[ImportanceKey, list[float]], dict[str, Any]]:
    """Run ``experiment`` per entry with on-disk caching: ``settings.json`` guards the folder
    against mixing settings; ``base.json`` holds the base result; ``entry-c-st-end-sa-ea.json``
    one entry each, written atomically as soon as it is done."""
    from tqdm.auto import tqdm

    folder = Path(cache) if cache is not None else None
    settings = {**experiment.settings, "model": model_hash(model)}
    if merge_id is not None:
        settings["merges"] = merge_id
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        _check_settings(folder / "settings.json", settings)
    base_file = folder / "base.json" if folder else None
    if base_file is not None and base_file.exists():
        base = json.loads(base_file.read_text())
    else:
        base = experiment.base(prepare(model, entry_plan(analysis, None, merges)))
        if base_file is not None:
            atomic_write(base_file, json.dumps(base) + "\n")
    metrics: dict[ImportanceKey, list[float]] = {}
    bar = tqdm(keys, desc=f"importance ({experiment.name})", unit="entry",
               disable=None if progress else True)  # fmt: skip
    for key in bar:
        file = folder / f"entry-{'-'.join(map(str, key))}.json" if folder else None
        if file is not None and file.exists():
            metrics[key] = json.loads(file.read_text())["metrics"]
            continue
        torch.manual_seed(_entry_seed(experiment.settings.get("seed", 0), key))
        chain = next(c for c in analysis.chains if c.index == key[0])
        net = prepare(model, entry_plan(analysis, key, merges))
        values = experiment.run(net, chain, key, base)
        metrics[key] = [float(v) for v in values]
        if file is not None:
            atomic_write(file, json.dumps({"key": list(key), "metrics": metrics[key]}) + "\n")
    scores = {k: metrics[k][experiment.columns.index(experiment.score)] for k in keys}
    meta = {"method": experiment.name, "fingerprint": settings, "base": base}
    columns = [experiment.score] + [c for c in experiment.columns if c != experiment.score]
    reordered = {k: [metrics[k][experiment.columns.index(c)] for c in columns] for k in keys}
    return scores, columns, reordered, meta


def _entry_seed(seed: int, key: ImportanceKey) -> int:
    """A per-entry seed that does not depend on which shard or run measures the entry."""
    digest = hashlib.sha256(json.dumps([seed, *key]).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _check_settings(path: Path, settings: dict[str, Any]) -> None:
    if path.exists():
        saved = json.loads(path.read_text())
        if saved != settings:
            diff = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
            raise TableError(
                f"{path}: the cache was made with other settings ({', '.join(diff)} differ); "
                "use another cache folder or delete this one"
            )
    else:
        atomic_write(path, json.dumps(settings, indent=1, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------- CSV


def write_raw_csv(table: ImportanceTable, path: PathLike) -> None:
    """Write the paper's raw ``importance.csv``: an unnamed index column (0), ``id, st, end,
    st_act, end_act`` and the metric columns the table recorded (the paper's ``train_loss,
    train_acc, val_loss, val_acc`` for finetune; the score column at least). A ``chain`` column
    is written only when a chain is not 0. ``ImportanceTable.read_csv`` reads it back."""
    columns = list(table.meta.get("columns") or [table.score])
    rows = {tuple(r[:5]): list(r[5:]) for r in table.meta.get("metrics") or []}
    if table.score not in columns or any(k not in rows for k in table.scores):
        columns, rows = [table.score], {k: [v] for k, v in table.scores.items()}
    multi = any(k[0] for k in table.scores)
    header = ["", "id", *(["chain"] if multi else []), "st", "end", "st_act", "end_act", *columns]
    body = (
        [0, n, *(k if multi else k[1:]), *(_blank(v) for v in rows[k])]
        for n, k in enumerate(table.scores)
    )
    atomic_write(path, csv_text(header, body))


def _blank(value: float) -> float | str:
    """Metrics that were not measured (NaN) are written as empty fields."""
    return "" if isinstance(value, float) and math.isnan(value) else value


__all__ = [
    "PAPER_COLUMNS",
    "build_network",
    "calibration_batches",
    "entries_of",
    "entry_plan",
    "measure_importance",
    "model_hash",
    "write_raw_csv",
]
