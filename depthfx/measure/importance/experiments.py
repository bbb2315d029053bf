"""The per-entry experiments of the ``finetune`` and ``callable`` importance methods.

An :class:`Experiment` runs once on the base network and once per entry on the entry's
prepared network (``prepare(model, entry_plan(...))``, a fresh copy each). The runner caches
every result on disk (atomic JSON files), so an interrupted run resumes; ``shard=(k, n)`` of
``measure_importance`` splits the entries across machines, and since each entry's seed depends
on the entry only, the results do not depend on how the work was split, nor on the executor
that runs the entries (``serial``, ``processes``, ``ray``: :mod:`depthfx.executors`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from depthfx.errors import TableError
from depthfx.executors import JobsFailed, make_executor
from depthfx.io import PathLike, atomic_write
from depthfx.measure.importance.digests import model_hash
from depthfx.measure.importance.entries import MergeRule, entry_plan
from depthfx.measure.importance.methods import ImportanceResult
from depthfx.passes.prepare import prepare
from depthfx.plans import Plan
from depthfx.records import Analysis, Chain
from depthfx.solver import ImportanceKey


@dataclass
class Experiment:
    """``base(prepared) -> dict`` once; ``run(prepared, chain, key, base) -> metrics`` per
    entry, in the order of ``columns``; ``settings`` identify the results in a cache."""

    name: str
    columns: tuple[str, ...]
    score: str
    base: Callable[[fx.GraphModule], dict[str, Any]]
    run: Callable[[fx.GraphModule, Chain, ImportanceKey, dict[str, Any]], list[float]]
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EntryJob:
    """One entry's work as an executor job: its key, its network's plan (made in the driver, so
    workers need no merge rule), its chain and its seed."""

    key: ImportanceKey
    plan: Plan
    chain: Chain
    seed: int


@dataclass(frozen=True)
class EntryShared:
    """What every entry's job needs, sent to each worker once: the model, the experiment (with
    its data) and the base network's result."""

    model: nn.Module
    experiment: Experiment
    base: dict[str, Any]


def run_entry(shared: EntryShared, job: EntryJob, device: str | None) -> list[float]:
    """One entry's experiment (an executor job). Seeded by the entry alone and run on a fresh
    prepared copy, so any worker, in any order, gives the result the serial run gives."""
    torch.manual_seed(job.seed)
    net = prepare(shared.model, job.plan)
    if device is not None:
        net = net.to(device)
    return [float(v) for v in shared.experiment.run(net, job.chain, job.key, shared.base)]


def run_experiments(
    model: nn.Module,
    analysis: Analysis,
    keys: list[ImportanceKey],
    experiment: Experiment,
    merges: MergeRule | None,
    merge_id: str | None,
    *,
    cache: PathLike | None,
    progress: bool,
    executor: str = "serial",
    executor_options: Mapping[str, Any] | None = None,
) -> ImportanceResult:
    """Run ``experiment`` per entry with on-disk caching: ``settings.json`` guards the folder
    against mixing settings; ``base.json`` holds the base result; ``entry-c-st-end-sa-ea.json``
    one entry each, written atomically by this process as soon as the entry's result arrives
    from ``executor`` (:mod:`depthfx.executors`), so an interrupted run resumes with only the
    missing entries. Entries that failed on a parallel executor are named in the error, after
    the others have finished (and been cached)."""
    from tqdm.auto import tqdm

    runner = make_executor(executor, executor_options)
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
    for key in keys:
        file = _entry_file(folder, key)
        if file is not None and file.exists():
            metrics[key] = json.loads(file.read_text())["metrics"]
    chains = {c.index: c for c in analysis.chains}
    seed = experiment.settings.get("seed", 0)
    todo = {
        key: EntryJob(
            key, entry_plan(analysis, key, merges), chains[key[0]], _entry_seed(seed, key)
        )
        for key in keys
        if key not in metrics
    }
    bar = tqdm(total=len(keys), initial=len(metrics), desc=f"importance ({experiment.name})",
               unit="entry", disable=None if progress else True)  # fmt: skip

    def store(key: Any, values: list[float]) -> None:
        metrics[key] = values
        file = _entry_file(folder, key)
        if file is not None:
            atomic_write(file, json.dumps({"key": list(key), "metrics": values}) + "\n")
        bar.update(1)

    try:
        runner.run(run_entry, todo, EntryShared(model, experiment, base), store)
    except JobsFailed as err:
        if folder is None:
            hint = "the finished entries are lost: pass cache= (CLI --cache) to keep them"
        else:
            hint = (
                f"the {len(metrics)} finished entries are cached in {folder}: run again with "
                "the same cache folder to measure only the missing ones"
            )
        what = "importance entries (chain, st, end, st_act, end_act)"
        raise JobsFailed(err.failures, what, hint) from None
    finally:
        bar.close()
    scores = {k: metrics[k][experiment.columns.index(experiment.score)] for k in keys}
    meta = {"method": experiment.name, "fingerprint": settings, "base": base}
    columns = [experiment.score] + [c for c in experiment.columns if c != experiment.score]
    reordered = {k: [metrics[k][experiment.columns.index(c)] for c in columns] for k in keys}
    return ImportanceResult(scores, columns, reordered, meta)


def _entry_file(folder: Path | None, key: ImportanceKey) -> Path | None:
    return folder / f"entry-{'-'.join(map(str, key))}.json" if folder is not None else None


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


__all__ = ["EntryJob", "EntryShared", "Experiment", "run_entry", "run_experiments"]
