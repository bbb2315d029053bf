"""Merge the plan's groups in a graph captured by dynamo, op by op in float64.

Pattern → rewrite → why, per merge group (i, j) of the plan found in the captured graph:

* the group's convs are found by the module path of their weight input (dynamo's source of the
  placeholder, spelled like depthfx's own fx node names);
* starting at the group input X, every node that is an *affine conv map of X* gets that map in
  float64 (``depthfx.dynamo.maps``): zero ``pad`` of X, ``conv2d``, eval ``batch_norm``,
  spatial crops (``getitem``) and ``add``/``iadd`` of two maps (residuals). Activations,
  pooling, other chains' convs end it;
* the last such node after conv j (the position-j value) is replaced by one ``conv2d`` (with a
  ``pad`` when the padding is not symmetric) whose weights are that map; dead nodes are removed.

Why exact: a node is only replaced by its own map, derived op by op with exact rules (a zero pad
is only accepted where it pads the true border of X, a conv's own padding likewise), so the
rewrite never changes the function of the captured graph — compile the module returned by
``depthfx.prepare`` (activations and paddings already changed), whose groups are affine, and
every group merges; on an unprepared model, groups with activations or intermediate padding are
reported (``NotMergedWarning``) and left alone.

A chain split by a graph break is reported (``GraphBreakWarning``) and left unmerged.
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from depthfx.algebra import crop
from depthfx.dynamo.maps import (
    AffineMap,
    NotAffine,
    call_arg,
    is_conv,
    is_zero_pad,
    propagate,
    spatial_size,
)
from depthfx.plans import Plan

_SOURCE = re.compile(r"^L\['[^']+'\]((?:\._modules\['[^']+'\])*)\._parameters\['weight'\]$")


class GraphBreakWarning(UserWarning):
    """A plan chain is split across graphs captured by dynamo; it is left unmerged."""


class NotMergedWarning(UserWarning):
    """A merge group of the plan is not an affine conv map in the captured graph."""


@dataclass
class Report:
    """What the backend did to one captured graph (attached as ``gm.meta["depthfx"]``)."""

    merged: list[tuple[str, int, int]] = field(default_factory=list)
    split_chains: list[str] = field(default_factory=list)
    skipped: list[tuple[str, int, int, str]] = field(default_factory=list)
    convs_before: int = 0
    convs_after: int = 0


def rewrite(
    gm: fx.GraphModule, example_inputs: Sequence[Any], plan: Plan
) -> tuple[fx.GraphModule, Report]:
    """A copy of ``gm`` with every fully captured, affine merge group of ``plan`` merged."""
    graph = fx.Graph()
    graph._codegen = gm.graph._codegen
    graph.output(graph.graph_copy(gm.graph, {}))
    out = fx.GraphModule(gm, graph)
    values = {
        n: v
        for n, v in zip(
            (n for n in graph.nodes if n.op == "placeholder"), example_inputs, strict=False
        )
    }
    convs = _conv_names(graph, values)
    report = Report(convs_before=len(convs))
    chain_convs = {name for cplan in plan.chains for name in cplan.convs}
    for cplan in plan.chains:
        where = f"chain {cplan.convs[0]}…{cplan.convs[-1]}"
        # Pruned convs are gone from the prepared module this backend compiles.
        kept = [name for p, name in enumerate(cplan.convs, 1) if p not in cplan.pruned]
        present = [name for name in kept if name in convs]
        if not present:
            continue
        if len(present) < len(kept):
            missing = [name for name in kept if name not in convs]
            warnings.warn(
                f"depthfx: {where} is split by a graph break (this captured graph holds "
                f"{present}, not {missing}); the chain is left unmerged",
                GraphBreakWarning,
                stacklevel=2,
            )
            report.split_chains.append(where)
            continue
        for start, end in cplan.groups():
            group = [
                convs[cplan.convs[p - 1]]
                for p in range(start + 1, end + 1)
                if p not in cplan.pruned
            ]
            others = {convs[n] for n in chain_convs if n in convs} - set(group)
            try:
                _merge_group(out, values, group, others, len(report.merged))
            except NotAffine as why:
                report.skipped.append((where, start, end, str(why)))
                warnings.warn(
                    f"depthfx: {where}, group {start}->{end} not merged: {why}",
                    NotMergedWarning,
                    stacklevel=2,
                )
                continue
            report.merged.append((where, start, end))
    graph.eliminate_dead_code()
    graph.lint()
    out.recompile()
    report.convs_after = sum(1 for n in graph.nodes if is_conv(n))
    out.meta["depthfx"] = report
    return out, report


def _conv_names(graph: fx.Graph, values: dict[fx.Node, Any]) -> dict[str, fx.Node]:
    """Conv call sites by the fx node name depthfx's capture gives the same call.

    The module path comes from the compiled root module's parameters, matched by identity
    (the weight inputs hold the real parameters); dynamo's placeholder source is only a
    fallback because after a graph break inside a submodule it is relative to that submodule.
    """
    owners = {id(p): name for name, p in _compiled_root().named_parameters(remove_duplicate=False)}
    namer = fx.Graph()
    names: dict[str, fx.Node] = {}
    for node in graph.nodes:
        if not is_conv(node):
            continue
        weight = call_arg(node, 1, "weight")
        path = owners.get(id(values.get(weight)))
        if path is not None:
            path = path.rpartition(".")[0]
        else:
            grapharg = weight.meta.get("grapharg") if isinstance(weight, fx.Node) else None
            match = _SOURCE.match(grapharg.source.name) if grapharg is not None else None
            if match is None:
                continue
            path = ".".join(re.findall(r"\['([^']+)'\]", match.group(1)))
        names[namer.create_node("call_module", path).name] = node
    return names


def _compiled_root() -> torch.nn.Module:
    """The module torch.compile wrapped: the innermost OptimizedModule call on the stack."""
    from torch._dynamo.eval_frame import OptimizedModule

    frame = sys._getframe()
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, OptimizedModule):
            return owner._orig_mod
        frame = frame.f_back
    return torch.nn.Module()


def _merge_group(
    gm: fx.GraphModule,
    values: dict[fx.Node, Any],
    group: list[fx.Node],
    forbidden: set[fx.Node],
    index: int,
) -> None:
    """Replace the group's output by one conv computing its map of the group input."""
    source = call_arg(group[0], 0, "input")
    if is_zero_pad(source):
        source = source.args[0]
    if not isinstance(source, fx.Node):
        raise NotAffine("the first conv has no tensor input")
    maps = propagate(gm, values, source, forbidden)
    for conv in group:
        if conv not in maps:
            raise NotAffine(
                f"conv {conv.name!r} is not an affine map of the group input "
                f"({_blocker(conv, maps)}); torch.compile the module returned by "
                "depthfx.prepare(model, plan)"
            )
    out = group[-1]
    while len(out.users) == 1:
        user = next(iter(out.users))
        if user not in maps or is_conv(user):
            break
        out = user
    ancestors = _ancestors(out)
    if not set(group) <= ancestors:
        raise NotAffine(f"the group's output {out.name!r} does not use all its convs")
    _emit(gm, source, out, maps[out], index)


def _blocker(conv: fx.Node, maps: dict[fx.Node, AffineMap]) -> str:
    node = call_arg(conv, 0, "input")
    while isinstance(node, fx.Node) and node in maps:
        node = next(iter(node.all_input_nodes), None)
    if not isinstance(node, fx.Node):
        return "no path from the group input"
    return f"{node.name!r} ({getattr(node.target, '__name__', node.target)}) is in the way"


def _ancestors(node: fx.Node) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(n.all_input_nodes)
    return seen


def _emit(gm: fx.GraphModule, source: fx.Node, out: fx.Node, m: AffineMap, index: int) -> None:
    """Insert pad? → conv2d computing ``m`` on ``source`` and let ``out``'s users read it."""
    (h, w), (ho, wo) = spatial_size(source), spatial_size(out)
    (kh, kw), (sh, sw), (top, left) = m.conv.kernel_size, m.conv.stride, m.offset
    bottom, right = sh * (ho - 1) + kh - top - h, sw * (wo - 1) + kw - left - w
    affine = replace(m.conv, padding=(top, bottom, left, right))

    if min(affine.padding) >= 0:  # the taps that meet only zero padding go, as in convert
        affine = crop(affine, (h, w))
        top, bottom, left, right = affine.padding
    dtype = out.meta["example_value"].dtype
    device = out.meta["example_value"].device
    prefix = f"depthfx_merged_{index}"
    gm.register_buffer(f"{prefix}_weight", affine.weight.to(device=device, dtype=dtype))
    gm.register_buffer(f"{prefix}_bias", affine.bias.to(device=device, dtype=dtype))
    graph = gm.graph
    symmetric = top == bottom >= 0 and left == right >= 0
    with graph.inserting_before(out):
        weight = graph.get_attr(f"{prefix}_weight")
        bias = graph.get_attr(f"{prefix}_bias")
        x = source
        if not symmetric:
            x = graph.call_function(F.pad, (source, [left, right, top, bottom]))
        padding = (top, left) if symmetric else (0, 0)
        conv = graph.call_function(
            torch.conv2d, (x, weight, bias, affine.stride, padding, (1, 1), affine.groups)
        )
    conv.meta.update(example_value=out.meta["example_value"], depthfx_merged=True)
    out.replace_all_uses_with(conv)


__all__ = ["GraphBreakWarning", "NotMergedWarning", "Report", "rewrite"]
