"""How far an entry's outputs are from the base network's: the proxy's scores and their sums.

Classifiers (one (N, classes) output) are scored by −KL(softmax(base) ‖ softmax(entry)), other
models by −relative MSE; with labels the exact estimate can score Δ top-1 instead. The sums are
kept in float64 and are JSON-ready, so a checkpointed run resumes bit for bit.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils import _pytree as pytree

from depthfx.errors import DepthFXError


class DivergenceSums:
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
        if is_classifier(ref):
            log_p = F.log_softmax(ref[0].double(), dim=1)
            log_q = F.log_softmax(out[0].double(), dim=1)
            self.kl += float((log_p.exp() * (log_p - log_q)).sum())
            if y is not None:
                self.correct += int((out[0].argmax(1) == y).sum())
        self.n += len(ref[0])

    def state(self) -> list[float]:
        return [self.kl, self.sq_err, self.sq_ref, self.correct, self.n]

    @classmethod
    def from_state(cls, state: list[float]) -> DivergenceSums:
        stats = cls()
        stats.kl, stats.sq_err, stats.sq_ref = state[:3]
        stats.correct, stats.n = int(state[3]), int(state[4])
        return stats


def is_classifier(outputs: list[torch.Tensor]) -> bool:
    """One (N, classes) output: scored by the KL of its softmax."""
    return len(outputs) == 1 and outputs[0].dim() == 2


def output_tensors(out: Any) -> list[torch.Tensor]:
    """The tensors of a network's (possibly nested) output, in order."""
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def check_score(score: str, classifier: bool, labelled: bool, estimate: str) -> str:
    """The score to compute (``auto`` resolved), refused where the model, data or estimate
    cannot give it."""
    if score == "auto":
        if estimate == "fisher":
            return "kl" if classifier else "mse"
        return "accuracy" if labelled and classifier else "kl" if classifier else "mse"
    if score not in ("kl", "mse", "accuracy"):
        raise DepthFXError(f"unknown proxy score {score!r}: use auto, kl, mse or accuracy")
    if score in ("kl", "accuracy") and not classifier:
        raise DepthFXError(f"score {score!r} needs a classifier (one (N, classes) output)")
    if score == "accuracy" and not labelled:
        raise DepthFXError("score 'accuracy' needs labelled proxy data (input, label)")
    if score == "accuracy" and estimate == "fisher":
        raise DepthFXError(
            "score 'accuracy' has no second-order estimate: use estimate='exact' "
            "(--estimate exact) or score 'kl'"
        )
    return score


def score_columns(
    stats: dict[Any, DivergenceSums],
    score: str,
    classifier: bool,
    labelled: bool,
    base_correct: int,
) -> tuple[list[str], dict[Any, list[float]]]:
    """The metric columns (``score``'s first) and every entry's values from its sums: Δ top-1 in
    percentage points against ``base_correct`` (labelled classifiers), −KL (classifiers) and
    −relative MSE."""
    columns: list[str] = []
    metrics: dict[Any, list[float]] = {k: [] for k in stats}
    names = {"accuracy": "val_acc", "kl": "neg_kl", "mse": "neg_rel_mse"}
    for s in [score] + [s for s in ("accuracy", "kl", "mse") if s != score]:
        if (s == "accuracy" and not (labelled and classifier)) or (s == "kl" and not classifier):
            continue
        columns.append(names[s])
        for k, st_ in stats.items():
            if s == "accuracy":
                value = 100.0 * (st_.correct - base_correct) / st_.n
            elif s == "kl":
                value = -st_.kl / st_.n
            else:
                value = -st_.sq_err / st_.sq_ref if st_.sq_ref > 0 else -st_.sq_err
            metrics[k].append(value + 0.0)  # + 0.0 turns -0.0 into 0.0
    return columns, metrics


__all__ = ["DivergenceSums", "check_score", "is_classifier", "output_tensors", "score_columns"]
