"""The ``depthfx`` torch.compile backend: apply a fine-tuned plan to dynamo's captured graph.

``torch.compile(prepared, backend="depthfx", options={"plan": plan, "backend": "inductor"})``
(registered through the ``torch_dynamo_backends`` entry point) receives each graph dynamo
captures, with parameters and buffers as inputs holding the real (frozen) tensors.

Pattern → rewrite → why, per merge group (i, j) of the plan found in the captured graph:

* the group's convs are found by the module path of their weight input (dynamo's source of the
  placeholder, spelled like depthfx's own fx node names);
* starting at the group input X, every node that is an *affine conv map of X* gets that map in
  float64: zero ``pad`` of X, ``conv2d``, eval ``batch_norm``, spatial crops (``getitem``) and
  ``add``/``iadd`` of two maps (residuals). Activations, pooling, other chains' convs end it;
* the last such node after conv j (the position-j value) is replaced by one ``conv2d`` (with a
  ``pad`` when the padding is not symmetric) whose weights are that map; dead nodes are removed.

Why exact: a node is only replaced by its own map, derived op by op with exact rules (a zero pad
is only accepted where it pads the true border of X, a conv's own padding likewise), so the
rewrite never changes the function of the captured graph — compile the module returned by
``depthfx.prepare`` (activations and paddings already changed), whose groups are affine, and
every group merges; on an unprepared model, groups with activations or intermediate padding are
reported and left alone. The rewritten graph is then run against the captured one on the
example inputs (``MergeMismatch`` beyond tolerance) and handed to the delegate backend.

A chain split by a graph break is reported (``GraphBreakWarning``) and left unmerged. The backend
is inference-only: it refuses graphs with grad enabled on parameters that require grad and
BatchNorm in training mode, because the folded weights are frozen copies.
"""

from __future__ import annotations

import logging
import operator
import os
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from math import gcd
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx
from torch.utils._pytree import tree_leaves

from depthfx.algebra import AffineConv, check_close, compose, fold_bn_tensors, from_tensors
from depthfx.errors import DepthFXError
from depthfx.plans import Plan, PlanError

logger = logging.getLogger(__name__)

_CONV = (torch.conv2d,)
_ADD = (operator.add, operator.iadd, torch.add)
_SOURCE = re.compile(r"^L\['[^']+'\]((?:\._modules\['[^']+'\])*)\._parameters\['weight'\]$")
_OPTIONS = {"plan", "backend", "backend_options", "check", "rtol", "atol"}


class GraphBreakWarning(UserWarning):
    """A plan chain is split across graphs captured by dynamo; it is left unmerged."""


class NotMergedWarning(UserWarning):
    """A merge group of the plan is not an affine conv map in the captured graph."""


class _Unsupported(Exception):
    """This node (or group) is not an exact affine conv map of the group input."""


@dataclass
class Report:
    """What the backend did to one captured graph (attached as ``gm.meta["depthfx"]``)."""

    merged: list[tuple[str, int, int]] = field(default_factory=list)
    split_chains: list[str] = field(default_factory=list)
    skipped: list[tuple[str, int, int, str]] = field(default_factory=list)
    convs_before: int = 0
    convs_after: int = 0


@dataclass(frozen=True)
class _Map:
    """y[o, p] = b[o] + Σ W[o, i, u] · X[i, s·p + u − offset], X zero outside its extent."""

    conv: AffineConv  # padding always (0, 0, 0, 0): the offset plays its role
    offset: tuple[int, int]

    def is_identity(self) -> bool:
        c = self.conv
        return (
            c.stride == (1, 1)
            and c.kernel_size == (1, 1)
            and c.groups == c.out_channels == c.in_channels
            and bool((c.weight == 1).all())
            and not bool(c.bias.any())
        )


def backend(
    gm: fx.GraphModule,
    example_inputs: Sequence[Any],
    *,
    options: dict[str, Any] | None = None,
) -> Callable[..., Any]:
    """torch.compile backend: merge the plan's groups in ``gm``, verify, then delegate.

    ``options``: ``plan`` (Plan, its JSON dict, or a path to its JSON file; required),
    ``backend`` (delegate, default ``"inductor"``), ``backend_options`` (passed to the delegate
    as ``options=``), ``check`` (default True), ``rtol``/``atol`` (1e-4/1e-5, as ``convert``).
    """
    options = dict(options or {})
    if unknown := set(options) - _OPTIONS:
        raise DepthFXError(f"depthfx backend: unknown options {sorted(unknown)}; known {_OPTIONS}")
    if "plan" not in options:
        raise DepthFXError(
            'the depthfx backend needs a plan: torch.compile(model, backend="depthfx", '
            'options={"plan": plan, "backend": "inductor"})'
        )
    plan = _load_plan(options["plan"])
    delegate_name = str(options.get("backend", "inductor"))
    if delegate_name == "depthfx":
        raise DepthFXError('options["backend"] names the backend to delegate to; not "depthfx"')
    _refuse_training(gm, example_inputs)
    rewritten, report = rewrite(gm, example_inputs, plan)
    if report.merged and options.get("check", True):
        verify(
            gm,
            rewritten,
            example_inputs,
            rtol=float(options.get("rtol", 1e-4)),
            atol=float(options.get("atol", 1e-5)),
        )
    logger.info(
        "depthfx: %d groups merged, convs %d -> %d, delegating to %r",
        len(report.merged),
        report.convs_before,
        report.convs_after,
        delegate_name,
    )
    from torch._dynamo.backends.registry import lookup_backend

    delegate = lookup_backend(delegate_name)
    if "backend_options" in options:
        return delegate(rewritten, list(example_inputs), options=options["backend_options"])
    return delegate(rewritten, list(example_inputs))


def _load_plan(value: Any) -> Plan:
    if isinstance(value, Plan):
        return value
    if isinstance(value, dict):
        return Plan.from_json(value)
    if isinstance(value, str | os.PathLike):
        return Plan.load(value)
    raise PlanError(
        f'options["plan"] must be a depthfx Plan, its JSON dict or a path, not {value!r}'
    )


def _refuse_training(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> None:
    if torch.is_grad_enabled() and any(
        isinstance(t, Tensor) and t.requires_grad for t in example_inputs
    ):
        raise DepthFXError(
            "the depthfx backend is inference-only (it folds frozen copies of the weights): "
            "call the compiled model under torch.no_grad() or torch.inference_mode(), or "
            "freeze the parameters with model.requires_grad_(False); fine-tune the module "
            "returned by depthfx.prepare() without this backend"
        )
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target is F.batch_norm and _arg(node, 5, "training"):
            raise DepthFXError(
                f"the depthfx backend is inference-only: BatchNorm {node.name!r} runs in "
                "training mode; call model.eval() before compiling"
            )


def verify(
    reference: fx.GraphModule,
    rewritten: fx.GraphModule,
    example_inputs: Sequence[Any],
    *,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> None:
    """Run both graphs on the example inputs; raise MergeMismatch beyond tolerance."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    with torch.no_grad(), unset_fake_temporarily():
        expected = tree_leaves(reference(*example_inputs))
        actual = tree_leaves(rewritten(*example_inputs))
    for k, (want, got) in enumerate(zip(expected, actual, strict=True)):
        if isinstance(want, Tensor):
            check_close(want, got, group=f"captured graph output {k}", rtol=rtol, atol=atol)


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
        present = [name for name in cplan.convs if name in convs]
        if not present:
            continue
        if len(present) < len(cplan.convs):
            missing = [name for name in cplan.convs if name not in convs]
            warnings.warn(
                f"depthfx: {where} is split by a graph break (this captured graph holds "
                f"{present}, not {missing}); the chain is left unmerged",
                GraphBreakWarning,
                stacklevel=2,
            )
            report.split_chains.append(where)
            continue
        for start, end in cplan.groups():
            group = [convs[name] for name in cplan.convs[start:end]]
            others = {convs[n] for n in chain_convs if n in convs} - set(group)
            try:
                _merge_group(out, values, group, others, len(report.merged))
            except _Unsupported as why:
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
    report.convs_after = sum(1 for n in graph.nodes if _is_conv(n))
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
        if not _is_conv(node):
            continue
        weight = _arg(node, 1, "weight")
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


def _is_conv(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in _CONV


def _arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _hw(node: fx.Node) -> tuple[int, int]:
    value = node.meta.get("example_value")
    if not isinstance(value, Tensor) or value.dim() != 4:
        raise _Unsupported(f"{node.name!r} is not a 4-d tensor")
    h, w = value.shape[-2:]
    if not isinstance(h, int) or not isinstance(w, int):
        raise _Unsupported(f"{node.name!r} has a dynamic spatial size")
    return h, w


def _merge_group(
    gm: fx.GraphModule,
    values: dict[fx.Node, Any],
    group: list[fx.Node],
    forbidden: set[fx.Node],
    index: int,
) -> None:
    """Replace the group's output by one conv computing its map of the group input."""
    source = _arg(group[0], 0, "input")
    if _is_zero_pad(source):
        source = source.args[0]
    if not isinstance(source, fx.Node):
        raise _Unsupported("the first conv has no tensor input")
    maps = _propagate(gm, values, source, forbidden)
    for conv in group:
        if conv not in maps:
            raise _Unsupported(
                f"conv {conv.name!r} is not an affine map of the group input "
                f"({_blocker(conv, maps)}); torch.compile the module returned by "
                "depthfx.prepare(model, plan)"
            )
    out = group[-1]
    while len(out.users) == 1:
        user = next(iter(out.users))
        if user not in maps or _is_conv(user):
            break
        out = user
    ancestors = _ancestors(out)
    if not set(group) <= ancestors:
        raise _Unsupported(f"the group's output {out.name!r} does not use all its convs")
    _emit(gm, source, out, maps[out], index)


def _blocker(conv: fx.Node, maps: dict[fx.Node, _Map]) -> str:
    node = _arg(conv, 0, "input")
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


def _is_zero_pad(node: Any) -> bool:
    return (
        isinstance(node, fx.Node)
        and node.op == "call_function"
        and node.target is F.pad
        and _arg(node, 2, "mode", "constant") == "constant"
        and _arg(node, 3, "value") in (None, 0, 0.0)
    )


def _propagate(
    gm: fx.GraphModule,
    values: dict[fx.Node, Any],
    source: fx.Node,
    forbidden: set[fx.Node],
) -> dict[fx.Node, _Map]:
    """The affine map of ``source`` of every node that is one (in topological order)."""
    channels = source.meta["example_value"].shape[1]
    identity = AffineConv(
        torch.ones(channels, 1, 1, 1, dtype=torch.float64),
        torch.zeros(channels, dtype=torch.float64),
        groups=channels,
    )
    maps = {source: _Map(identity, (0, 0))}
    size = _hw(source)
    started = False
    for node in gm.graph.nodes:
        if node is source:
            started = True
            continue
        if not started or node.op != "call_function":
            continue
        if _is_conv(node) and (node in forbidden or node.meta.get("depthfx_merged")):
            continue
        try:
            result = _map_of(gm, values, node, maps, size)
        except _Unsupported:
            continue
        if result is not None:
            maps[node] = result
    return maps


def _map_of(
    gm: fx.GraphModule,
    values: dict[fx.Node, Any],
    node: fx.Node,
    maps: dict[fx.Node, _Map],
    size: tuple[int, int],
) -> _Map | None:
    """The map of ``node`` if it is an exact affine map of the source, else None."""
    first = _arg(node, 0, "input")
    if first not in maps:
        return None
    m = maps[first]
    if node.target is F.pad and _is_zero_pad(node):
        pads = list(_arg(node, 1, "pad"))
        if len(pads) > 4:
            return None
        pads += [0] * (4 - len(pads))
        return _pad(m, (pads[2], pads[3], pads[0], pads[1]), _hw(first), size)
    if node.target is operator.getitem:
        return _crop(m, node.args[1], _hw(first))
    if _is_conv(node):
        weight = _tensor(gm, values, _arg(node, 1, "weight"))
        bias = _arg(node, 2, "bias")
        affine = from_tensors(
            weight,
            None if bias is None else _tensor(gm, values, bias),
            _arg(node, 3, "stride", 1),
            _arg(node, 4, "padding", 0),
            _arg(node, 5, "dilation", 1),
            _arg(node, 6, "groups", 1),
        )
        if any(affine.padding):
            m = _pad(m, affine.padding, _hw(first), size)
        return _Map(compose(m.conv, replace(affine, padding=(0, 0, 0, 0))), m.offset)
    if node.target is F.batch_norm:
        if _arg(node, 5, "training", False):
            return None
        stats = [_arg(node, k, name) for k, name in enumerate(_BN_ARGS, start=1)]
        mean, var, weight, bias = (None if s is None else _tensor(gm, values, s) for s in stats)
        if mean is None or var is None:
            return None
        eps = float(_arg(node, 7, "eps", 1e-5))
        return _Map(fold_bn_tensors(m.conv, mean, var, weight, bias, eps=eps), m.offset)
    if node.target in _ADD:
        if node.kwargs.get("alpha", 1) != 1 or len(node.args) != 2 or node.args[1] not in maps:
            return None
        if node.target is operator.iadd and len(first.users) != 1:
            return None
        return _add(m, maps[node.args[1]])
    return None


_BN_ARGS = ("running_mean", "running_var", "weight", "bias")


def _tensor(gm: fx.GraphModule, values: dict[fx.Node, Any], node: Any) -> Tensor:
    """The real value of a parameter/buffer input or a constant attribute."""
    if (
        isinstance(node, fx.Node)
        and node.op == "placeholder"
        and isinstance(values.get(node), Tensor)
    ):
        return values[node]
    if isinstance(node, fx.Node) and node.op == "get_attr":
        return _get_attr(gm, node.target)
    raise _Unsupported(f"{node} is not a parameter or buffer")


def _get_attr(gm: fx.GraphModule, target: str) -> Tensor:
    owner, _, name = target.rpartition(".")
    return getattr(gm.get_submodule(owner) if owner else gm, name)


def _pad(
    m: _Map, pads: tuple[int, int, int, int], in_size: tuple[int, int], size: tuple[int, int]
) -> _Map:
    """Zero padding (t, b, l, r; negative crops) of a map: exact only for a window of X that
    already reaches X's border on each side it pads, where the new zeros are X's own zeros."""
    top, bottom, left, right = pads
    if any(p > 0 for p in pads) and not m.is_identity():
        raise _Unsupported("zero padding of an intermediate map (padding not moved)")
    (oh, ow), (h, w), (height, width) = m.offset, in_size, size
    if (top > 0 and oh < 0) or (left > 0 and ow < 0):
        raise _Unsupported("zero padding inside the input's extent")
    if (bottom > 0 and h - oh < height) or (right > 0 and w - ow < width):
        raise _Unsupported("zero padding inside the input's extent")
    return _Map(m.conv, (oh + top, ow + left))


def _crop(m: _Map, index: Any, in_size: tuple[int, int]) -> _Map:
    """x[:, :, a:b, c:d]: the same map read from row a, column c on."""
    index = index if isinstance(index, tuple) else (index,)
    if index and index[0] is Ellipsis:
        index = (slice(None),) * (5 - len(index)) + index[1:]
    if len(index) > 4 or not all(isinstance(i, slice) for i in index):
        raise _Unsupported("not a spatial crop")
    index = index + (slice(None),) * (4 - len(index))
    if index[0] != slice(None) or index[1] != slice(None):
        raise _Unsupported("indexes batch or channels")
    starts = []
    for axis, size in zip(index[2:], in_size, strict=True):
        start, _stop, step = axis.indices(size)
        if step != 1:
            raise _Unsupported("strided crop")
        starts.append(start)
    (sh, sw), (oh, ow) = m.conv.stride, m.offset
    return _Map(m.conv, (oh - sh * starts[0], ow - sw * starts[1]))


def _add(a: _Map, b: _Map) -> _Map:
    """a + b: both kernels placed at a common offset (the sizes agree: the graph adds them)."""
    ca, cb = a.conv, b.conv
    if ca.stride != cb.stride or (ca.in_channels, ca.out_channels) != (
        cb.in_channels,
        cb.out_channels,
    ):
        raise _Unsupported("adding maps with different strides or channels")
    offset = (max(a.offset[0], b.offset[0]), max(a.offset[1], b.offset[1]))
    kernel = [
        max(c.kernel_size[k] + offset[k] - m.offset[k] for c, m in ((ca, a), (cb, b)))
        for k in (0, 1)
    ]
    groups = gcd(ca.groups, cb.groups)
    out_g, in_g = ca.out_channels // groups, ca.in_channels // groups
    weight = ca.weight.new_zeros(groups, out_g, in_g, *kernel)
    for c, m in ((ca, a), (cb, b)):
        dh, dw = offset[0] - m.offset[0], offset[1] - m.offset[1]
        kh, kw = c.kernel_size
        weight[..., dh : dh + kh, dw : dw + kw] += c.block_weight(groups)
    conv = AffineConv(
        weight.reshape(ca.out_channels, in_g, *kernel), ca.bias + cb.bias, ca.stride, groups=groups
    )
    return _Map(conv, offset)


def _emit(gm: fx.GraphModule, source: fx.Node, out: fx.Node, m: _Map, index: int) -> None:
    """Insert pad? → conv2d computing ``m`` on ``source`` and let ``out``'s users read it."""
    (h, w), (ho, wo) = _hw(source), _hw(out)
    (kh, kw), (sh, sw), (top, left) = m.conv.kernel_size, m.conv.stride, m.offset
    bottom, right = sh * (ho - 1) + kh - top - h, sw * (wo - 1) + kw - left - w
    dtype = out.meta["example_value"].dtype
    device = out.meta["example_value"].device
    prefix = f"depthfx_merged_{index}"
    gm.register_buffer(f"{prefix}_weight", m.conv.weight.to(device=device, dtype=dtype))
    gm.register_buffer(f"{prefix}_bias", m.conv.bias.to(device=device, dtype=dtype))
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
            torch.conv2d, (x, weight, bias, m.conv.stride, padding, (1, 1), m.conv.groups)
        )
    conv.meta.update(example_value=out.meta["example_value"], depthfx_merged=True)
    out.replace_all_uses_with(conv)


__all__ = ["GraphBreakWarning", "NotMergedWarning", "Report", "backend", "rewrite", "verify"]
