"""Chain pass 4: align the residuals of each merge group with its moved padding.

Pattern: a residual (src, dst) of the chain whose body lies inside a multi-conv merge group
(fused), and a residual kept across a group boundary (src before the group, dst at its end).

Rewrite (spec §5.1 item 5): after the padding move a fused residual's body sees maps with extra
border. Its identity is taken from the padded group input when the body starts the group (else
from the value at src), then cropped to the body's output at the body's own padding
(``crop_like``); a projection shortcut reads that source shifted by the body's padding
(``shift``) and its output is cropped to the body's. A kept residual ending at a group's end
keeps its add: the group's recorded output becomes the add's body argument.

A fused residual whose body is pruned empty (``prune_convs``) needs no crop: both sides of its
add are the same map, x + x; when the body starts the group, its add (or the transparent op
before it) reads the padded group input instead of the unpadded one.

Why it is exact: ``convert`` puts a fused identity at the kernel tap of the body's own padding
(``depthfx.algebra.residual``), and adds a fused projection into the body kernel at that offset;
the crop and the shift read the residual's source at exactly that offset and the body's size,
so the prepared network computes what the merged conv computes.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import fx

from depthfx.algebra import group_padding
from depthfx.passes.chain_rewrite import ChainRewrite
from depthfx.plans import PlanError
from depthfx.records import Chain, Residual


@torch.fx.wrap
def crop_like(x: torch.Tensor, like: torch.Tensor, top: int, left: int) -> torch.Tensor:
    """x[..., top:top+H, left:left+W] with (H, W) the spatial size of ``like``."""
    return x[:, :, top : top + like.shape[2], left : left + like.shape[3]]


@torch.fx.wrap
def shift(x: torch.Tensor, top: int, left: int) -> torch.Tensor:
    """Drop the first ``top`` rows and ``left`` columns (aligns a projection shortcut)."""
    return x[:, :, top:, left:]


def align_residuals(rewrite: ChainRewrite) -> None:
    """Crop or shift each fused residual; point each group ending a kept residual at its body."""
    nodes, chain, value = rewrite.nodes, rewrite.chain, rewrite.value
    graph = rewrite.gm.graph
    residual_of = {r.dst: r for r in chain.residuals}
    for k, record in enumerate(rewrite.records):
        start, end = record.start, record.end
        if start in rewrite.padded:  # the group's padding was moved to its input
            padded = rewrite.padded[start]
            for residual in rewrite.fused(start, end):
                add = nodes[residual.add_node]
                body_convs = rewrite.kept_convs(residual.src, residual.dst)
                if not body_convs:
                    if residual.src == start:
                        _read_padded(add, value[start], padded)
                    continue
                body_pad = group_padding(body_convs)
                source = padded if residual.src == start else value[residual.src]
                body = _body_arg(add, residual, nodes, chain, value)
                if residual.kind == "identity":
                    identity = next(a for a in add.args if isinstance(a, fx.Node) and a is not body)
                    with graph.inserting_before(add):
                        cropped = graph.call_function(
                            crop_like, (source, body, body_pad[0], body_pad[2])
                        )
                    add.replace_input_with(identity, cropped)
                else:
                    shortcut_conv = nodes[residual.shortcut.node]
                    shortcut_out = next(
                        a for a in add.args if isinstance(a, fx.Node) and a is not body
                    )
                    with graph.inserting_before(shortcut_conv):
                        shifted = graph.call_function(shift, (source, body_pad[0], body_pad[2]))
                    shortcut_conv.replace_input_with(shortcut_conv.args[0], shifted)
                    with graph.inserting_before(add):
                        cropped = graph.call_function(crop_like, (shortcut_out, body, 0, 0))
                    add.replace_input_with(shortcut_out, cropped)
        # A kept residual ending here: the group's output is the body, not the add.
        kept = residual_of.get(end)
        if kept is not None and kept.src < start:
            add = nodes[kept.add_node]
            body = _body_arg(add, kept, nodes, chain, value)
            rewrite.records[k] = replace(record, output=body.name)


def _read_padded(add: fx.Node, source: fx.Node, padded: fx.Node) -> None:
    """An empty body starting the group: its add reads ``padded`` for ``source`` on both sides
    (on the body side through its transparent ops, if any)."""
    node = add
    body = [a for a in add.all_input_nodes if a is not source]
    while body:
        if len(body) != 1:
            raise PlanError(f"cannot follow the empty residual body before {add.name!r}")
        node = body[0]
        if source in node.all_input_nodes:
            break
        body = [a for a in node.all_input_nodes if a is not source]
    node.replace_input_with(source, padded)
    add.replace_input_with(source, padded)


def _body_arg(
    add: fx.Node,
    residual: Residual,
    nodes: dict[str, fx.Node],
    chain: Chain,
    value: dict[int, fx.Node],
) -> fx.Node:
    """The argument of a residual add that comes from the residual body."""
    tensors = [a for a in add.args if isinstance(a, fx.Node)]
    if residual.kind == "identity":
        others = [a for a in tensors if a is not value[residual.src]]
    else:
        short = residual.shortcut
        ends = {short.node} | ({short.bn_node} if short.bn_node else set())
        others = [a for a in tensors if a.name not in ends]
    if len(others) != 1:
        raise PlanError(f"cannot tell the body from the shortcut at {add.name!r}")
    return others[0]


__all__ = ["align_residuals", "crop_like", "shift"]
