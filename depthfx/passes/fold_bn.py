"""Fold eval-mode BatchNorm modules into the convs before them, in place (the graph pass; the
float64 math it applies is :mod:`depthfx.algebra.fold_bn`).

Pattern: ``call_module Conv2d`` → ``call_module BatchNorm2d`` (running statistics, eval), the
conv's output used by the BN only and the conv module called from that node only.

Rewrite: the conv's weight and bias become W·γ/σ and (b − μ)·γ/σ + β (computed in float64 by
:func:`depthfx.algebra.fold_bn.fold_bn`, cast back to the conv's dtype); the BN module is
replaced by ``nn.Identity``. The graph itself is unchanged, so every node keeps its name and an
:class:`~depthfx.records.Analysis` of the graph still describes it (chains, BN node names,
positions): ``prepare`` on the folded graph computes what it computes on the original.

Why: the importance proxy runs thousands of small networks built from one private copy of the
model; a BN is a full memory pass over its map, and folding it makes those networks about 1.5×
faster on CPU. Exact pointwise (BN acts after the conv, padded borders included) up to fp32
round-off of the folded weights. This pass edits modules in place: run it on a copy.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from depthfx.algebra.fold_bn import fold_bn
from depthfx.algebra.kernel import from_tensors


def fold_bn_modules(gm: fx.GraphModule) -> int:
    """Fold every matching conv→BN pair of ``gm`` in place; returns how many were folded."""
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    folded = 0
    for node in gm.graph.nodes:
        if not _foldable(gm, node, calls):
            continue
        conv_node = node.args[0]
        conv: nn.Conv2d = gm.get_submodule(conv_node.target)
        bn: nn.BatchNorm2d = gm.get_submodule(node.target)
        # Stride, padding and dilation do not enter the fold: build the map without them so
        # the weight keeps its shape.
        affine = fold_bn(from_tensors(conv.weight, conv.bias, groups=conv.groups), bn)
        with torch.no_grad():
            conv.weight.copy_(affine.weight.to(conv.weight.dtype))
            bias = affine.bias.to(conv.weight.dtype)
            if conv.bias is None:
                conv.bias = nn.Parameter(bias, requires_grad=conv.weight.requires_grad)
            else:
                conv.bias.copy_(bias)
        parent, _, leaf = node.target.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, leaf, nn.Identity())
        folded += 1
    return folded


def _foldable(gm: fx.GraphModule, node: fx.Node, calls: dict[str, int]) -> bool:
    """Why a pair qualifies: the BN must compute an affine map (eval, running statistics, a
    plain ``BatchNorm2d`` — a subclass may bundle an activation), and the conv's weights must
    serve this BN only (its output has no other user, its module no other call)."""
    if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
        return False
    bn = gm.get_submodule(node.target)
    if type(bn) is not nn.BatchNorm2d or bn.training or bn.running_mean is None:
        return False
    if calls.get(node.target) != 1:
        return False
    source = node.args[0]
    if not isinstance(source, fx.Node) or source.op != "call_module" or len(source.users) != 1:
        return False
    conv = gm.get_submodule(source.target)
    return type(conv) is nn.Conv2d and calls.get(source.target) == 1


__all__ = ["fold_bn_modules"]
