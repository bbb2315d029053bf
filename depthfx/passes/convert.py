"""convert: replace every merge group of a prepared network by one conv, and prove it exact.

Pattern → rewrite → why, per group (i, j) recorded by ``prepare``:

* conv_{i+1} → [BN] → … → conv_j → [BN], with the group's padding already moved to its input
  and the residuals whose body lies inside the group still explicit,
* becomes pad(P) → Conv2d(W, b, stride, groups) on the value at position i; the activation of
  position j (if kept) now reads the merged conv.

Each BN is folded with its own eps; consecutive convs compose with the general rule (stride,
dilation, groups, non-square kernels, per-side padding; ``depthfx.algebra.compose``); an
identity residual becomes a 1 at the kernel tap of the body's padding and a projection
shortcut (1×1 + BN, strided) is added into the body kernel at its offset
(``depthfx.algebra.residual``). Residuals cut by a boundary (both ends in S) keep their add.
A conv the plan pruned is a no-op in the composition (``prepare`` already replaced it by the
identity); a residual body pruned empty fuses as 2·I.
All algebra runs in float64 and is cast back at the end (BN folding:
:mod:`depthfx.algebra.fold_bn`; the graph pass that folds BN in place, for the importance
proxy, is :mod:`depthfx.passes.fold_bn`). Exact because ``prepare`` moved the
padding before any fine-tuning: the prepared network *is* the composition being merged.

``convert`` then runs both networks on the example inputs in eval mode and raises
``depthfx.MergeMismatch`` if they differ beyond tolerance.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from tqdm.auto import tqdm

from depthfx.algebra import (
    AffineConv,
    compose_all,
    compose_cropped,
    crop_window,
    fold_bn,
    fold_bn_tensors,
    from_tensors,
    fuse_identity,
    fuse_projection,
    group_padding,
    to_modules,
)
from depthfx.backends.limits import MAX_KERNEL_BYTES
from depthfx.errors import MergeMismatch
from depthfx.passes.group_record import PREPARED_ATTR, ConvStep, GroupRecord, PreparedInfo
from depthfx.passes.verify import compare_outputs, group_mismatch
from depthfx.plans import Plan, PlanError

logger = logging.getLogger(__name__)


def convert(
    prepared: fx.GraphModule,
    plan: Plan | None = None,
    example_inputs: Sequence[torch.Tensor] | None = None,
    *,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    check: bool = True,
    max_kernel_bytes: int = MAX_KERNEL_BYTES,
) -> fx.GraphModule:
    """Merge a network made by ``prepare`` (after any fine-tuning) into its shallow form.

    The result is a new eval-mode GraphModule; ``prepared`` is not modified. ``plan``, when
    given, must be the plan ``prepared`` was made with. With ``check`` (default) the merged
    network is compared with ``prepared`` on ``example_inputs`` (default: seeded random inputs
    of the recorded shapes) and ``MergeMismatch`` is raised beyond ``rtol``/``atol``, naming
    the first group whose merged conv does not reproduce its prepared convs.

    Each merged conv is cropped to its input size at ``example_inputs`` (default: the shapes
    ``prepare`` recorded, those the latency table was measured at): taps that meet only zero
    padding are dropped (``depthfx.algebra.crop``), so the result is exact for inputs of that
    size.

    A merged kernel grows by s·(k − 1) per conv (s: the stride product before it), so merging
    across many strided convs can give kernels of hundreds of taps (spec §7 pitfall 13).
    ``PlanError`` is raised before any composition when a group's (cropped) float64 kernel
    would exceed ``max_kernel_bytes``: such a plan is not worth deploying, and composing it
    could exhaust memory. Only the taps that survive the crop are composed.
    """
    info: PreparedInfo | None = getattr(prepared, PREPARED_ATTR, None)
    if info is None:
        raise PlanError("convert() takes the module returned by depthfx.prepare()")
    if plan is not None and plan.chains != info.plan.chains:
        raise PlanError("the plan differs from the one this module was prepared with")
    merged = copy.deepcopy(prepared).eval()
    with torch.no_grad():  # each group's input size, to crop its kernel to
        ShapeProp(merged).propagate(*_inputs(info, example_inputs, merged))
    nodes = {n.name: n for n in merged.graph.nodes}
    sizes = {r.input: tuple(nodes[r.input].meta["tensor_meta"].shape[2:]) for r in info.groups}
    for record in info.groups:
        _check_size(merged, record, max_kernel_bytes, sizes[record.input])
    # Group outputs replaced so far: a later group whose input is one must read the new node.
    replaced: dict[str, fx.Node] = {}
    for record in tqdm(info.groups, desc="merging", unit="group", disable=None, leave=False):
        _merge_group(merged, record, replaced, sizes[record.input])
    merged.graph.eliminate_dead_code()
    merged.delete_all_unused_submodules()
    merged.graph.lint()
    merged.recompile()
    if check:
        inputs = _inputs(info, example_inputs, merged)
        try:
            compare_outputs(prepared, merged, inputs, rtol=rtol, atol=atol)
        except MergeMismatch as err:
            raise group_mismatch(prepared, merged, inputs, rtol=rtol, atol=atol) or err from err
    return merged


def count_convs(module: nn.Module) -> int:
    """Number of conv call sites in a GraphModule (or conv modules in a plain module)."""
    if isinstance(module, fx.GraphModule):
        modules = dict(module.named_modules())
        return sum(
            1
            for n in module.graph.nodes
            if n.op == "call_module" and isinstance(modules.get(n.target), nn.Conv2d)
        )
    return sum(isinstance(m, nn.Conv2d) for m in module.modules())


def _inputs(
    info: PreparedInfo, example_inputs: Sequence[torch.Tensor] | None, like: nn.Module
) -> tuple[torch.Tensor, ...]:
    """The example inputs, or seeded random ones of the recorded shapes in ``like``'s dtype."""
    if example_inputs is not None:
        return tuple(example_inputs)
    generator = torch.Generator().manual_seed(0)
    param = next(like.parameters())
    return tuple(
        torch.randn(shape, generator=generator).to(param.device, param.dtype)
        for shape in info.example_shapes
    )


def _check_size(
    gm: fx.GraphModule, record: GroupRecord, limit: int, input_size: tuple[int, ...]
) -> None:
    """Raise PlanError when the group's dense float64 (cropped) kernel would exceed ``limit``
    bytes."""
    size, scale = [1, 1], [1, 1]
    for step in record.convs:
        conv = gm.get_submodule(step.module)
        for axis in (0, 1):
            size[axis] += scale[axis] * conv.dilation[axis] * (conv.kernel_size[axis] - 1)
            scale[axis] *= conv.stride[axis]
    size = list(crop_window((size[0], size[1]), (scale[0], scale[1]), record.pad, input_size)[0])
    first, last = (
        gm.get_submodule(record.convs[0].module),
        gm.get_submodule(record.convs[-1].module),
    )
    nbytes = 8 * last.out_channels * first.in_channels * size[0] * size[1]
    if nbytes > limit:
        raise PlanError(
            f"{record.describe()} merges into a {size[0]}×{size[1]} kernel with "
            f"{last.out_channels}×{first.in_channels} channels ({nbytes / 2**30:.1f} GiB in "
            f"float64, limit {limit / 2**30:.1f} GiB): cut it with more merge boundaries, or "
            "raise max_kernel_bytes"
        )


def _merge_group(
    gm: fx.GraphModule,
    record: GroupRecord,
    replaced: dict[str, fx.Node],
    input_size: tuple[int, ...],
) -> None:
    if len(record.convs) == 1 and gm.get_submodule(record.convs[0].module).padding_mode != "zeros":
        return  # its padding is not zeros: nothing to merge, and folding would change it
    nodes = {n.name: n for n in gm.graph.nodes}
    affine = _group_map(gm, record, input_size)
    dtype = gm.get_submodule(record.convs[0].module).weight.dtype
    pad, conv = to_modules(affine, dtype)
    prefix = record.name
    graph = gm.graph
    output = nodes[record.output]
    new_nodes: list[fx.Node] = []
    x = replaced.get(record.input, nodes[record.input])
    anchor = output
    for suffix, module in (("pad", pad), ("conv", conv)):
        if module is None:
            continue
        gm.add_submodule(f"{prefix}_{suffix}", module)
        with graph.inserting_after(anchor):
            x = graph.call_module(f"{prefix}_{suffix}", (x,))
        new_nodes.append(x)
        anchor = x
    output.replace_all_uses_with(x, delete_user_cb=lambda user: user not in new_nodes)
    replaced[record.output] = x
    logger.debug("%s merged into %s", record.describe(), tuple(conv.weight.shape))


def _group_map(gm: fx.GraphModule, record: GroupRecord, input_size: tuple[int, ...]) -> AffineConv:
    """The float64 map of a whole group, fused residuals included (innermost first), cropped
    to ``input_size`` (only the kept taps are composed: ``compose_cropped``).

    A pruned conv is a no-op in the composition; a residual body pruned empty is the identity
    (so the residual fuses as 2·I)."""
    maps = {p: _conv_map(gm, step) for p, step in zip(record.positions, record.convs, strict=True)}
    by_src: dict[int, list] = {}
    for residual in record.residuals:
        by_src.setdefault(residual.src, []).append(residual)

    def build(lo: int, hi: int, inside: object | None) -> list[AffineConv]:
        pieces: list[AffineConv] = []
        p = lo
        while p < hi:
            nested = [r for r in by_src.get(p, []) if r is not inside and r.dst <= hi and r.dst > p]
            if nested:
                residual = max(nested, key=lambda r: r.dst)
                inner = build(p, residual.dst, residual)
                body = compose_all(inner) if inner else _identity(_channels(maps, p))
                if residual.kind == "identity":
                    piece = fuse_identity(body)
                else:
                    piece = fuse_projection(body, _conv_map(gm, residual.shortcut))
                p = residual.dst
            else:
                piece = maps.get(p + 1)
                p += 1
            if piece is not None:
                pieces.append(piece)
        return pieces

    pieces = build(record.start, record.end, None)
    assert pieces, "a group keeps at least one conv (ChainPlan.validate)"
    if len(record.convs) > 1 and group_padding(pieces) != record.pad:
        raise PlanError(
            f"group {record.start}->{record.end} of chain {record.chain}: composed padding "
            f"{group_padding(pieces)} differs from the moved padding {record.pad}"
        )
    return compose_cropped(pieces, input_size)


def _channels(maps: dict[int, AffineConv], position: int) -> int:
    """Channels of the map at ``position`` of a group (pruned convs keep the channel count)."""
    after = [m for p, m in sorted(maps.items()) if p > position]
    return after[0].in_channels if after else max(maps.items())[1].out_channels


def _identity(channels: int) -> AffineConv:
    """The identity on ``channels`` channels as a 1×1 depthwise map (exact in float64)."""
    return AffineConv(
        torch.ones(channels, 1, 1, 1, dtype=torch.float64),
        torch.zeros(channels, dtype=torch.float64),
        groups=channels,
    )


def _conv_map(gm: fx.GraphModule, step: ConvStep) -> AffineConv:
    """Conv (with its padding before the move) followed by its BN, as one float64 map."""
    module = gm.get_submodule(step.module)
    conv = from_tensors(
        module.weight, module.bias, module.stride, 0, module.dilation, module.groups
    )
    conv = replace(conv, padding=step.padding)
    if step.bn is None and step.bn_kind != "function":
        return conv
    if step.bn_kind == "function":
        mean, var, weight, bias = (
            None if name is None else _attr(gm, name) for name in step.bn_attrs or ()
        )
        if mean is None or var is None or step.bn_eps is None:
            raise PlanError(f"functional BN after {step.module!r} has no running statistics")
        return fold_bn_tensors(conv, mean, var, weight, bias, eps=step.bn_eps)
    return fold_bn(conv, gm.get_submodule(step.bn))


def _attr(gm: fx.GraphModule, target: str) -> torch.Tensor:
    owner, _, name = target.rpartition(".")
    return getattr(gm.get_submodule(owner) if owner else gm, name)


__all__ = ["convert", "count_convs"]
