"""The Fisher proxy (``estimate="fisher"``, the default): each entry's changed region exactly,
the rest to second order.

Pattern: an entry's network differs from the base network only in a small region around its
block (activations removed or added, paddings moved); everything before the region computes
the same values, everything after it computes the same function of different inputs.

Estimate: a graph diff (by node structure, not by chain positions, so it holds for any model
the analysis covers; :mod:`depthfx.measure.importance.regions`) splits the entry's network into

* P, the prefix: nodes structurally equal to the base's and fed only by P nodes (same values);
* R, the suffix: nodes structurally equal to the base's whose users, in both networks, are in R
  (the same function of its inputs, the frontier F: the non-R nodes R reads);
* the region between them, run exactly on the base's cached P values, giving δ_f = entry − base
  at every f in F.

The output divergence is then taken to second order from base-network gradients at F:

* classifiers: KL(p ‖ q) ≈ ½ δᵀ 𝓕 δ with the Fisher matrix 𝓕 = E_{y∼p}[g_y g_yᵀ],
  g_y = ∂ log p_y / ∂F, estimated with ``samples`` labels drawn from p per image;
* other outputs: relative MSE ‖J δ‖² / ‖out‖², with ‖J δ‖² = E_v[(vᵀ J δ)²], v ∼ N(0, I)
  (Hutchinson), ``samples`` draws per image.

Why: the exact proxy runs every entry's network from its first change to the output; this one
runs the base network forward and ``samples`` times backward once per batch, then per entry only
its region (a few convs), which makes a MobileNetV2 table at 224×224 with 256 images a matter of
minutes on two cores. Entries that change nothing have δ = 0 and score exactly 0; entries whose
region reaches the outputs are scored exactly (no approximation is left).

All regions run as one graph with their common nodes computed once
(:mod:`depthfx.measure.importance.shared_regions`); with a cache folder the running sums are
saved after every batch (:mod:`depthfx.measure.importance.checkpoint`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F

from depthfx.io import PathLike
from depthfx.measure.importance.checkpoint import ProxyCheckpoint
from depthfx.measure.importance.digests import data_digest
from depthfx.measure.importance.divergence import (
    DivergenceSums,
    check_score,
    is_classifier,
    output_tensors,
)
from depthfx.measure.importance.entries import MergeRule, PlanOf, entry_plan
from depthfx.measure.importance.methods import ImportanceResult
from depthfx.measure.importance.networks import build_network
from depthfx.measure.importance.proxy_data import Batches, proxy_inputs
from depthfx.measure.importance.regions import RegionFinder, with_values
from depthfx.measure.importance.shared_regions import SharedRegions
from depthfx.records import Analysis
from depthfx.solver import ImportanceKey

#: Label (or direction) draws per image for the second-order estimate.
FISHER_SAMPLES = 4
#: Images per Fisher-proxy batch: its gradient draws are four times the activations, and on
#: CPU batches of 8 run them 1.3× faster than batches of 32 (cache and page-fault bound).
FISHER_BATCH = 8


class Draws:
    """Gradient draws at one value, stored as (batch, draws, elements) rows in the value's
    memory order, so that ``dot`` is one batched matrix product over views: no copy of the
    draws (four times the value's size) per entry."""

    def __init__(self, rows: torch.Tensor, order: list[int]) -> None:
        self.rows = rows
        self.order = order

    @classmethod
    def empty_like(cls, value: torch.Tensor, samples: int) -> Draws:
        order = [0, *sorted(range(1, value.dim()), key=lambda d: -value.stride(d))]
        rows = value.new_empty((len(value), samples, value[0].numel()), dtype=value.dtype)
        return cls(rows, order)

    @property
    def samples(self) -> int:
        return self.rows.shape[1]

    def set(self, k: int, grad: torch.Tensor | None) -> None:
        if grad is None:
            self.rows[:, k].zero_()
        else:
            self.rows[:, k] = self._flat(grad)

    def dot(self, delta: torch.Tensor) -> torch.Tensor:
        """(batch, draws): each draw's gradient · delta, per image."""
        return torch.bmm(self.rows, self._flat(delta).unsqueeze(-1)).squeeze(-1)

    def _flat(self, t: torch.Tensor) -> torch.Tensor:
        return t.permute(self.order).reshape(len(t), -1)


class FisherScores:
    """Running second-order estimates of each entry's output divergence (module docstring)."""

    def __init__(self, keys: Iterable[Any], classifier: bool) -> None:
        self.classifier = classifier
        self.total = {k: 0.0 for k in keys}
        self.sq_ref = 0.0
        self.n = 0

    def gradients(
        self,
        outputs: list[torch.Tensor],
        frontier: list[torch.Tensor],
        samples: int,
        generator: torch.Generator,
    ) -> list[Draws]:
        """Per frontier value, the gradients (``samples`` draws) of log p_y, y ∼ p, for
        classifiers, or of vᵀ·outputs, v ∼ N(0, I), otherwise."""
        draws = [Draws.empty_like(f, samples) for f in frontier]
        for k in range(samples):
            if self.classifier:
                log_p = F.log_softmax(outputs[0].double(), dim=1)
                y = torch.multinomial(log_p.detach().exp(), 1, generator=generator)
                objective = log_p.gather(1, y).sum()
            else:
                objective = sum(
                    (torch.randn(o.shape, generator=generator, dtype=o.dtype) * o).sum()
                    for o in outputs
                )
            grads = torch.autograd.grad(
                objective, frontier, retain_graph=k < samples - 1, allow_unused=True
            )
            for d, g in zip(draws, grads, strict=True):
                d.set(k, g)
        return draws

    def add_reference(self, outputs: list[torch.Tensor]) -> None:
        self.sq_ref += sum(float((o.double() ** 2).sum()) for o in outputs)
        self.n += len(outputs[0])

    def add(self, key: Any, deltas: list[torch.Tensor], grads: list[Draws]) -> None:
        """Accumulate Σ_images mean_draws (g · δ)² (½ of it for the KL); ``grads[i]`` holds
        the draws of the gradient at the value whose change is ``deltas[i]``."""
        s = sum(g.dot(d).double() for g, d in zip(grads, deltas, strict=True))
        value = float((s**2).sum()) / grads[0].samples
        self.total[key] += 0.5 * value if self.classifier else value

    def state(self) -> dict[str, Any]:
        """The running sums (JSON-ready; keys are tuples of ints)."""
        totals = [[*k, v] for k, v in self.total.items()]
        return {"classifier": self.classifier, "total": totals, "sq_ref": self.sq_ref, "n": self.n}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> FisherScores:
        scores = cls([], state["classifier"])
        scores.total = {tuple(row[:-1]): row[-1] for row in state["total"]}
        scores.sq_ref, scores.n = state["sq_ref"], state["n"]
        return scores

    def score(self, key: Any) -> float:
        if self.classifier:
            return -self.total[key] / self.n + 0.0
        return -(self.total[key] / self.sq_ref if self.sq_ref > 0 else self.total[key]) + 0.0


def fisher_proxy(
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
    plan_of: PlanOf | None = None,
) -> ImportanceResult:
    """The second-order proxy of this module. With ``cache``, its running
    sums are saved after every batch and a later run with the same settings (``identity``:
    model, entries, merge groups; and the data, seed, batch size, score) resumes from them.
    ``plan_of``: each key's network plan (default :func:`entry_plan`)."""
    analysis, batches, is_random = proxy_inputs(analysis, data, images, batch_size, seed)
    labelled = batches[0][1] is not None
    generator = torch.Generator().manual_seed(seed)
    fisher: FisherScores | None = None
    exact: dict[ImportanceKey, DivergenceSums] = {}
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
            exact = {tuple(row[:5]): DivergenceSums.from_state(row[5:]) for row in saved["exact"]}
            generator.set_state(torch.tensor(saved["generator"], dtype=torch.uint8))
    if done < len(batches):
        fisher, exact = _fisher_batches(
            analysis, keys, merges, batches, done, generator, fisher, exact, checkpoint,
            score=score, labelled=labelled, progress=progress, plan_of=plan_of,
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
    return ImportanceResult(scores, [column], {k: [v] for k, v in scores.items()}, meta)


def _fisher_batches(
    analysis: Analysis,
    keys: list[ImportanceKey],
    merges: MergeRule | None,
    batches: Batches,
    done: int,
    generator: torch.Generator,
    fisher: FisherScores | None,
    exact: dict[ImportanceKey, DivergenceSums],
    checkpoint: ProxyCheckpoint | None,
    *,
    score: str,
    labelled: bool,
    progress: bool,
    plan_of: PlanOf | None = None,
) -> tuple[FisherScores, dict[ImportanceKey, DivergenceSums]]:
    """Find every entry's region, then run batches ``done``… and accumulate the sums."""
    from tqdm.auto import tqdm

    base = build_network(analysis, entry_plan(analysis, None, merges))
    stable = {n.name for n in analysis.graph_module.graph.nodes}
    find_region = RegionFinder(base, stable)
    regions = {
        key: find_region(build_network(
            analysis, entry_plan(analysis, key, merges) if plan_of is None else plan_of(key)
        ))
        for key in tqdm(keys, desc="importance (regions)", unit="entry",
                        disable=None if progress else True)
    }  # fmt: skip
    names = sorted({n for r in regions.values() for n in (*r.inputs, *r.outputs)})
    frontier = sorted({n for r in regions.values() if not r.exact for n in r.outputs})
    net = with_values(base, names)
    exact = exact or {k: DivergenceSums() for k, r in regions.items() if r.exact}
    shared = SharedRegions(regions)
    bar = tqdm(total=len(shared) * len(batches), initial=len(shared) * done, unit="run",
               desc="importance (proxy)", disable=None if progress else True)  # fmt: skip
    with bar:
        for index in range(done, len(batches)):
            x, y = batches[index]
            with torch.enable_grad():
                out, found = net(x.detach().requires_grad_(True))
                outputs = output_tensors(out)
                if fisher is None:
                    score = check_score(score, is_classifier(outputs), labelled, "fisher")
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


__all__ = ["FISHER_BATCH", "FISHER_SAMPLES", "Draws", "FisherScores", "fisher_proxy"]
