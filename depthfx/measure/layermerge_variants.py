"""LayerMerge variants of a real model's blocks: which kept subsets a block's table rows stand for.

The original enumerates kept-count combinations per conv type and keys rows by (kernel, dw), so
combinations that differ only in 1×1 convs collide and one is silently dropped (spec §7.4:
ResNet-50's ``layer1.0.conv1`` can never be pruned). Here a variant is keyed by its kept subset
and its merged shape comes from the traced convs (:func:`~depthfx.measure.block_shapes.merged_conv`:
dilation, non-square kernels and strides included). Per combination of kept counts per type the
subset is the one with the largest L1 norm of the **BN-folded** weights (spec §7.5: BN's γ/σ
rescale the conv, so raw weights misjudge it); since that sum is separable per type, the best
subset keeps the top-n convs of each type, with no enumeration of subsets. Irreducible
(shape-changing) convs are always kept, a block keeps at least one conv, and a projection
residual inside the block keeps a conv of its body.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import fx

from depthfx.algebra import fold_bn, fold_bn_tensors, from_tensors
from depthfx.measure.block_shapes import ConvShape, merged_conv
from depthfx.records import Analysis, Chain, ConvInfo

#: A conv's type for the enumeration: kernel, dilation and whether it is depthwise.
ConvType = tuple[tuple[int, int], tuple[int, int], bool]


@dataclass(frozen=True)
class BlockVariant:
    """Block (st, end) of chain ``chain`` realised as one merged conv of the convs ``kept``."""

    chain: int
    st: int
    end: int
    kept: tuple[int, ...]
    shape: ConvShape

    @property
    def pruned(self) -> tuple[int, ...]:
        return tuple(p for p in range(self.st + 1, self.end + 1) if p not in self.kept)


def folded_l1(gm: fx.GraphModule, conv: ConvInfo) -> float:
    """‖W·γ/σ‖₁ of conv with its BN folded (its own eps); the raw ‖W‖₁ when it has no BN."""
    module = gm.get_submodule(conv.module)
    affine = from_tensors(
        module.weight, module.bias, module.stride, 0, module.dilation, module.groups
    )
    if conv.bn_kind == "function" and conv.bn_attrs is not None and conv.bn_eps is not None:
        mean, var, weight, bias = (
            None if name is None else _attr(gm, name) for name in conv.bn_attrs
        )
        if mean is not None and var is not None:
            affine = fold_bn_tensors(affine, mean, var, weight, bias, eps=conv.bn_eps)
    elif conv.bn is not None:
        affine = fold_bn(affine, gm.get_submodule(conv.bn))
    return float(affine.weight.abs().sum())


def conv_type(conv: ConvInfo) -> ConvType:
    """One predicate for "depthwise" (spec §7.6): groups == in == out channels."""
    depthwise = conv.groups == conv.in_channels == conv.out_channels and conv.groups > 1
    return conv.kernel, conv.dilation, depthwise


def block_variants(chain: Chain, st: int, end: int, norms: dict[int, float]) -> list[BlockVariant]:
    """The variants of block (st, end): one per combination of kept counts per conv type."""
    prunable = set(chain.prunable)
    positions = range(st + 1, end + 1)
    by_type: dict[ConvType, list[int]] = {}
    for p in positions:
        by_type.setdefault(conv_type(chain.conv(p)), []).append(p)
    types = list(by_type)
    # Within a type: irreducible convs first (always kept), then by folded norm, then position.
    ranked = {
        t: sorted(ps, key=lambda p: (p in prunable, -norms[p], p)) for t, ps in by_type.items()
    }
    ranges = [range(sum(p not in prunable for p in by_type[t]), len(by_type[t]) + 1) for t in types]
    bodies = [
        set(range(r.src + 1, r.dst + 1))
        for r in chain.residuals
        if r.kind == "projection" and st <= r.src and r.dst <= end
    ]
    variants = []
    for counts in itertools.product(*ranges):
        kept = tuple(sorted(p for t, n in zip(types, counts, strict=True) for p in ranked[t][:n]))
        if not kept or any(not body & set(kept) for body in bodies):
            continue
        shape = merged_conv([chain.conv(p) for p in kept])
        variants.append(BlockVariant(chain.index, st, end, kept, shape))
    return variants


def chain_variants(analysis: Analysis) -> list[BlockVariant]:
    """The variants of every valid block of every chain, norms from the analysed weights."""
    gm = analysis.graph_module
    out: list[BlockVariant] = []
    with torch.no_grad():
        for chain in analysis.chains:
            norms = {p: folded_l1(gm, chain.conv(p)) for p in range(1, chain.num_convs + 1)}
            for st, end in chain.valid_blocks():
                out.extend(block_variants(chain, st, end, norms))
    return out


def _attr(gm: fx.GraphModule, target: str) -> torch.Tensor:
    owner, _, name = target.rpartition(".")
    return getattr(gm.get_submodule(owner) if owner else gm, name)


__all__ = ["BlockVariant", "ConvType", "block_variants", "chain_variants", "conv_type", "folded_l1"]
