"""The proxy with BN re-estimation (``bn_recalibration=True``): every entry's network gets its
BatchNorm statistics re-estimated on the proxy's data before it is compared with the base.

Why: removing activations shifts the statistics the BN layers inside and after a block see;
fine-tuning repairs that shift first, so a score taken before it over-penalises blocks whose
damage is mostly a BN shift (EagleEye). Re-estimating BN (:func:`~depthfx.measure.
bn_recalibration.recalibrate_bn`) removes that part, so the proxy ranks entries more like their
accuracy after fine-tuning (``benchmarks/accuracy.py`` measures by how much).

How: the base network is re-estimated on the same batches as each entry's network, so an
entry that changes nothing still scores exactly 0 and the score reflects the block, not the
sample's noise. The scores are those of the exact proxy (−KL, −relative MSE, Δ top-1 with
labels). BN cannot be folded beforehand, so each entry costs two passes (re-estimation, then
scoring) over its network from q on.

Pattern → rewrite → why exact: entries sharing their network up to their last merge boundary q
<= st (:mod:`.prefixes`) share its head; per group the head runs once per batch and pass, the
tails of all entries on its values. Re-estimation is per BN layer a cumulative average over the
batches of statistics computed from that layer's inputs alone, so the head's BN layers get the
statistics each entry's whole network would give them, and in the re-estimation pass (BN in
train mode, batch statistics) as in the scoring pass (eval) the head passes the tails the
values the whole network computes. Every network runs on its own BN buffers (parameters are
shared: nothing writes them), so the user's model and the other entries are untouched.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

from depthfx.measure.bn_recalibration import estimate_bn_in_pass, recalibrate_bn
from depthfx.measure.importance.divergence import (
    DivergenceSums,
    check_score,
    is_classifier,
    output_tensors,
    score_columns,
)
from depthfx.measure.importance.entries import MergeRule, entry_plan
from depthfx.measure.importance.methods import ImportanceResult
from depthfx.measure.importance.networks import build_network
from depthfx.measure.importance.prefixes import prefix_groups, split_group
from depthfx.measure.importance.proxy_data import Batches, proxy_batches
from depthfx.plans import Plan
from depthfx.records import Analysis
from depthfx.solver import ImportanceKey


def recalibrated_proxy(
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
    one_pass: bool = False,
) -> ImportanceResult:
    """Every entry's network, BN re-estimated on the proxy's batches, against the base network
    re-estimated the same way; entries sharing a prefix share its work (module docstring).
    ``one_pass``: :func:`~depthfx.measure.bn_recalibration.estimate_bn_in_pass` on all the
    images in one batch instead of a statistics pass and an evaluation pass."""
    from tqdm.auto import tqdm

    example = torch.zeros(analysis.example_shapes[0])
    batches, is_random = proxy_batches(data, example, images, batch_size, seed)
    if one_pass:
        ys = [y for _, y in batches]
        batches = [(torch.cat([x for x, _ in batches]), None if ys[0] is None else torch.cat(ys))]
    batches = [(x.to(memory_format=torch.channels_last), y) for x, y in batches]
    labelled = batches[0][1] is not None
    gm = copy.deepcopy(analysis.graph_module).eval().requires_grad_(False)
    analysis = dataclasses.replace(analysis, graph_module=gm.to(memory_format=torch.channels_last))

    def reestimate(net: nn.Module) -> None:
        if one_pass:
            estimate_bn_in_pass(net, batch_size)  # during its next run, on all the images
        else:
            recalibrate_bn(net, iter([x for x, _ in batches]))

    base = _network(analysis, entry_plan(analysis, None, merges))
    reestimate(base)
    refs = _outputs(base.eval(), batches)
    classifier = is_classifier(refs[0])
    score = check_score(score, classifier, labelled, "exact")
    base_correct = sum(
        int((r[0].argmax(1) == y).sum()) for r, (_, y) in zip(refs, batches, strict=True)
    ) if labelled and classifier else 0  # fmt: skip
    plans = {k: entry_plan(analysis, k, merges) for k in keys}
    stats = {k: DivergenceSums() for k in keys}
    bar = tqdm(total=len(keys), desc="importance (proxy, BN re-estimated)", unit="entry",
               disable=None if progress else True)  # fmt: skip
    with bar:
        for group_key, group in prefix_groups(analysis, keys, plans).items():
            nets = [_network(analysis, plans[k]) for k in group]
            head, tails = split_group(analysis, group_key, nets)
            reestimate(_Fanout(head, tails))
            with torch.inference_mode():
                for (x, y), ref in zip(batches, refs, strict=True):
                    values = head(x)
                    for key, tail in zip(group, tails, strict=True):
                        stats[key].add(ref, output_tensors(tail(*values)), y)
            bar.update(len(group))
    columns, metrics = score_columns(stats, score, classifier, labelled, base_correct)
    meta = {
        "method": "proxy",
        "fingerprint": {
            "method": "proxy",
            "estimate": "exact",
            "bn_recalibration": "one-pass" if one_pass else True,
            "score": score,
            "images": sum(len(x) for x, _ in batches),
            "random_inputs": is_random,
            "seed": seed,
        },
    }
    return ImportanceResult({k: metrics[k][0] for k in keys}, columns, metrics, meta)


class _Fanout(nn.Module):
    """A group's head feeding every tail: one module, so ``recalibrate_bn`` re-estimates the
    head's and all tails' BN layers in one pass over the batches."""

    def __init__(self, head: fx.GraphModule, tails: list[fx.GraphModule]) -> None:
        super().__init__()
        self.head, self.tails = head, nn.ModuleList(tails)

    def forward(self, x: torch.Tensor) -> None:
        values = self.head(x)
        for tail in self.tails:
            tail(*values)


def _network(analysis: Analysis, plan: Plan) -> fx.GraphModule:
    """The plan's eval-mode network with private copies of the modules that hold BN layers
    (their statistics are written), sharing every parameter and other module with the capture
    (read only). Copying only those, not the whole capture, keeps a network in milliseconds."""
    net = build_network(analysis, plan)
    targets = {n.target for n in net.graph.nodes if n.op == "call_module"}
    for target in sorted(targets):
        module = net.get_submodule(target)
        if any(isinstance(m, _BatchNorm) for m in module.modules()):
            owner, _, leaf = target.rpartition(".")
            setattr(net.get_submodule(owner) if owner else net, leaf, _own_buffers(module))
    return net


def _own_buffers(module: nn.Module) -> nn.Module:
    """``module`` with its own buffers, sharing its parameters. A BN layer (the common case)
    is copied shallowly with cloned buffers: a deep copy of its attributes cost more than
    building the entry's network."""
    if not isinstance(module, _BatchNorm):
        return copy.deepcopy(module, memo={id(p): p for p in module.parameters()})
    own = copy.copy(module)  # then no dict is shared: hooks registered on it stay its own
    own.__dict__.update({k: copy.copy(v) for k, v in vars(module).items() if isinstance(v, dict)})
    own._buffers = {k: None if b is None else b.clone() for k, b in module._buffers.items()}
    return own


def _outputs(net: fx.GraphModule, batches: Batches) -> list[list[torch.Tensor]]:
    with torch.inference_mode():
        return [output_tensors(net(x)) for x, _ in batches]


__all__ = ["recalibrated_proxy"]
