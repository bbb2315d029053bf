"""Find conv chains in a captured graph (spec §1.1, pitfalls §7.1–7.11, 7.14).

Pattern, per position p of a chain::

    [zero pad] → conv → [BN | BN+act] → transparent* → [add(·, shortcut)] → transparent*
               → [activation] → transparent*

where every node but the last has exactly one user, and the last (position p's value) has
either one user — the next conv or its zero pad — or two: the next conv and a residual
shortcut (the add itself, or a 1×1 projection conv [+BN] feeding it). A fork must be
closed by an add later on the same chain, innermost first; otherwise the chain is cut back
to the fork. Anything else ends the chain: pooling, concat, split, gating, upsampling,
transposed or non-2-d convs, norms that cannot be folded (a BN not directly after a conv
included), reused conv/BN modules, a tensor with several other users, any other op.

What it records: :class:`~depthfx.records.Chain` objects — conv geometry with effective
per-side padding, the BN to fold, every activation call site as its own slot, residuals,
transparent (dropout-like) nodes, barriers and optional positions.

Why this is enough for exact merging: inside a chain every op between two convs is affine
in eval mode (BN, transparent ops, residual adds on the chain) except the recorded
activation slots, so the convs of any valid block compose into one conv once its inner
activations are removed and padding is moved to the block's first conv.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch.nn.functional as F
from torch import fx, nn

from depthfx import patterns
from depthfx.errors import DepthFXError
from depthfx.records import ActivationSlot, Chain, ConvInfo, Residual


@dataclass
class _Fork:
    """An open residual: position ``src`` feeds ``add`` through an identity or a projection."""

    src: int
    add: fx.Node
    shortcut: ConvInfo | None = None
    nodes: tuple[fx.Node, ...] = ()


@dataclass
class _ChainBuilder:
    """A chain under construction."""

    convs: list[ConvInfo] = field(default_factory=list)
    conv_nodes: list[fx.Node] = field(default_factory=list)
    positions: list[fx.Node] = field(default_factory=list)
    activations: dict[int, ActivationSlot] = field(default_factory=dict)
    residuals: list[Residual] = field(default_factory=list)
    shortcut_nodes: dict[int, tuple[fx.Node, ...]] = field(default_factory=dict)
    transparent: dict[int, tuple[str, ...]] = field(default_factory=dict)
    forks: list[_Fork] = field(default_factory=list)

    def truncate(self, s: int) -> None:
        """Cut the chain back to position ``s``."""
        del self.convs[s:], self.conv_nodes[s:], self.positions[s + 1 :]
        self.activations = {p: a for p, a in self.activations.items() if p <= s}
        self.residuals = [r for r in self.residuals if r.dst <= s]
        self.shortcut_nodes = {d: n for d, n in self.shortcut_nodes.items() if d <= s}
        self.transparent = {p: t for p, t in self.transparent.items() if p <= s}


def _arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _shape(node: fx.Node) -> tuple[int, ...]:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else ()


class _Finder:
    """Classifies nodes of one graph and walks chains through it."""

    def __init__(self, gm: fx.GraphModule, exclude: Iterable[str]) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
        self.exclude = set(exclude)
        self.assigned: set[fx.Node] = set()

    def module(self, node: fx.Node) -> nn.Module | None:
        return self.modules.get(node.target) if node.op == "call_module" else None  # type: ignore[arg-type]

    # ---- node classification -------------------------------------------------------------

    def conv_kind(self, node: fx.Node) -> str | None:
        """``"conv2d"``/``"conv2d_same"`` for a plain 2-d conv called at one site only."""
        m = self.module(node)
        if m is None or self.calls[node.target] != 1 or len(_shape(node)) != 4:
            return None
        return patterns.lookup_class(patterns.CONV_MODULES, type(m))

    def excluded(self, node: fx.Node) -> bool:
        return node.name in self.exclude or (
            node.op == "call_module" and node.target in self.exclude
        )

    def chain_conv(self, node: fx.Node) -> bool:
        return (
            node not in self.assigned
            and not self.excluded(node)
            and self.conv_kind(node) is not None
        )

    def zero_pad(self, node: fx.Node) -> tuple[int, int, int, int] | None:
        """(top, bottom, left, right) of a non-negative constant-zero pad of H and W."""
        if node.op == "call_function" and node.target in patterns.PAD_FUNCTIONS:
            pad = _arg(node, 1, "pad")
            mode, value = _arg(node, 2, "mode", "constant"), _arg(node, 3, "value", None)
            if mode != "constant" or value not in (None, 0, 0.0):
                return None
        elif isinstance(m := self.module(node), nn.ZeroPad2d | nn.ConstantPad2d):
            if isinstance(m, nn.ConstantPad2d) and m.value != 0:
                return None
            pad = m.padding
        else:
            return None
        if not isinstance(pad, tuple | list) or len(pad) not in (2, 4):
            return None
        left, right, top, bottom = (*pad, 0, 0) if len(pad) == 2 else pad
        if not all(isinstance(v, int) and v >= 0 for v in (left, right, top, bottom)):
            return None
        return top, bottom, left, right

    def entry(self, v: fx.Node, u: fx.Node) -> tuple[fx.Node | None, fx.Node] | None:
        """(pad node, conv node) when user ``u`` of ``v`` starts a chain conv on ``v``."""
        if not u.args or u.args[0] is not v:
            return None
        if self.chain_conv(u):
            return None, u
        if self.zero_pad(u) is None or len(u.users) != 1:
            return None
        conv = next(iter(u.users))
        if conv.args[0] is not u or not self.chain_conv(conv):
            return None
        m = self.module(conv)
        own_pad = m.padding == "same" or any(m.padding)  # type: ignore[union-attr]
        if m.padding_mode != "zeros" and own_pad:  # zero pad, then reflect pad: not one pad
            return None
        return u, conv

    def pad_before(self, conv: fx.Node) -> fx.Node | None:
        """The zero-pad node that ``conv`` absorbs, if any."""
        pad = conv.args[0]
        if isinstance(pad, fx.Node) and pad.args and isinstance(pad.args[0], fx.Node):
            step = self.entry(pad.args[0], pad)
            if step is not None and step[1] is conv:
                return pad
        return None

    def batchnorm(self, u: fx.Node, x: fx.Node) -> dict[str, Any] | None:
        """ConvInfo's BN fields when ``u`` is a foldable BN of ``x`` (+ ``act`` for norm_act)."""
        if not u.args or u.args[0] is not x:
            return None
        if (m := self.module(u)) is not None:
            if self.calls[u.target] != 1 or getattr(m, "running_mean", None) is None:
                return None
            info: dict[str, Any] = {"bn": u.target, "bn_node": u.name, "bn_eps": float(m.eps)}
            if patterns.lookup_class(patterns.NORM_ACT_MODULES, type(m)) is not None:
                act = getattr(m, "act", None)
                op = (
                    None
                    if act is None
                    else patterns.lookup_class(patterns.ACTIVATION_MODULES, type(act))
                )
                if op is None and not isinstance(act, nn.Identity):
                    return None  # an activation we cannot rebuild
                return {**info, "bn_kind": "norm_act", "act": op}
            if patterns.lookup_class(patterns.BATCHNORM_MODULES, type(m)) is not None:
                return {**info, "bn_kind": "module"}
            return None
        if u.op == "call_function" and u.target is F.batch_norm:
            stats = [
                _arg(u, i, k)
                for i, k in enumerate(("running_mean", "running_var", "weight", "bias"), 1)
            ]
            if any(s is not None and s.op != "get_attr" for s in stats) or None in stats[:2]:
                return None
            return {
                "bn_node": u.name,
                "bn_kind": "function",
                "bn_attrs": tuple(None if s is None else s.target for s in stats),
                "bn_eps": float(_arg(u, 7, "eps", 1e-5)),
            }
        return None

    def activation(self, u: fx.Node, x: fx.Node, position: int) -> ActivationSlot | None:
        if not u.args or u.args[0] is not x:
            return None
        if (m := self.module(u)) is not None:
            op = patterns.lookup_class(patterns.ACTIVATION_MODULES, type(m))
            if op is None or len(u.args) != 1:
                return None
            return ActivationSlot(
                position, u.name, "module", op, u.target,  # type: ignore[arg-type]
                patterns.module_activation_params(op, m), bool(getattr(m, "inplace", False)), m,
            )  # fmt: skip
        if u.op == "call_function" and u.target in patterns.ACTIVATION_FUNCTIONS:
            op, kind = patterns.ACTIVATION_FUNCTIONS[u.target], "function"  # type: ignore[index]
            inplace = bool(u.kwargs.get("inplace", False)) or getattr(
                u.target, "__name__", ""
            ).endswith("_")
        elif u.op == "call_method" and u.target in patterns.ACTIVATION_METHODS:
            op, kind = patterns.ACTIVATION_METHODS[u.target], "method"  # type: ignore[index]
            inplace = str(u.target).endswith("_")
        else:
            return None
        if any(isinstance(a, fx.Node) for a in (*u.args[1:], *u.kwargs.values())):
            return None
        params = patterns.activation_params(op, u.args[1:], dict(u.kwargs))
        return ActivationSlot(position, u.name, kind, op, None, params, inplace)  # type: ignore[arg-type]

    def transparent(self, u: fx.Node, x: fx.Node) -> bool:
        if not u.args or u.args[0] is not x:
            return False
        if (m := self.module(u)) is not None:
            return patterns.lookup_class(patterns.TRANSPARENT_MODULES, type(m)) is not None
        return u.op == "call_function" and u.target in patterns.TRANSPARENT_FUNCTIONS

    @staticmethod
    def residual_add(u: fx.Node) -> bool:
        if u.op == "call_function":
            ok = u.target in patterns.ADD_FUNCTIONS and u.kwargs.get("alpha", 1) == 1
        else:
            ok = (
                u.op == "call_method"
                and u.target in patterns.ADD_METHODS
                and "alpha" not in u.kwargs
            )
        return ok and len(u.args) == 2 and all(isinstance(a, fx.Node) for a in u.args)

    def describe(self, node: fx.Node) -> str:
        """``node`` for an end reason: ``maxpool (MaxPool2d)``, ``cat (function)``."""
        if (m := self.module(node)) is not None:
            return f"{node.target} ({type(m).__name__})"
        target = getattr(node.target, "__name__", node.target)
        return f"{target} ({node.op.removeprefix('call_')}, node {node.name})"

    # ---- conv records --------------------------------------------------------------------

    def conv_info(
        self, conv: fx.Node, pad_node: fx.Node | None, bn: dict[str, Any] | None
    ) -> ConvInfo:
        m = self.module(conv)
        assert isinstance(m, nn.Conv2d)
        kind = self.conv_kind(conv)
        x = pad_node.args[0] if pad_node is not None else conv.args[0]
        in_shape = _shape(conv.args[0])  # type: ignore[arg-type]
        kh, kw = m.kernel_size
        sh, sw = m.stride
        dh, dw = m.dilation
        if kind == "conv2d_same":  # timm: TF "same" from the runtime size (pad_same)
            ph = max((math.ceil(in_shape[2] / sh) - 1) * sh + (kh - 1) * dh + 1 - in_shape[2], 0)
            pw = max((math.ceil(in_shape[3] / sw) - 1) * sw + (kw - 1) * dw + 1 - in_shape[3], 0)
            pad = [ph // 2, ph - ph // 2, pw // 2, pw - pw // 2]
        elif m.padding == "same":  # torch: extra padding goes bottom/right
            th, tw = dh * (kh - 1), dw * (kw - 1)
            pad = [th // 2, th - th // 2, tw // 2, tw - tw // 2]
        elif m.padding == "valid":
            pad = [0, 0, 0, 0]
        else:
            pad = [m.padding[0], m.padding[0], m.padding[1], m.padding[1]]
        if pad_node is not None:
            pad = [a + b for a, b in zip(pad, self.zero_pad(pad_node), strict=True)]  # type: ignore[arg-type]
        fields = {k: v for k, v in (bn or {}).items() if k != "act"}
        return ConvInfo(
            node=conv.name,
            module=conv.target,  # type: ignore[arg-type]
            in_channels=m.in_channels,
            out_channels=m.out_channels,
            kernel=(kh, kw),
            stride=(sh, sw),
            dilation=(dh, dw),
            groups=m.groups,
            padding=tuple(pad),  # type: ignore[arg-type]
            padding_mode=m.padding_mode,
            bias=m.bias is not None,
            input_shape=_shape(x),  # type: ignore[arg-type]
            output_shape=_shape(conv),
            conv_kind=kind,  # type: ignore[arg-type]
            pad_node=pad_node.name if pad_node is not None else None,
            **fields,
        )

    def projection(self, u: fx.Node, v: fx.Node) -> _Fork | None:
        """A fork when ``u`` is a 1×1 conv on ``v`` whose [BN] output feeds only an add."""
        if not self.chain_conv(u) or u.args[0] is not v or self.module(u).kernel_size != (1, 1):
            return None
        nodes, out, bn = [u], u, None
        if len(out.users) == 1 and (bn := self.batchnorm(next(iter(out.users)), out)) is not None:
            if bn["bn_kind"] == "norm_act" and bn["act"] is not None:
                return None
            out = next(iter(out.users))
            nodes.append(out)
        if len(out.users) != 1 or not self.residual_add(add := next(iter(out.users))):
            return None
        return _Fork(-1, add, self.conv_info(u, None, bn), tuple(nodes))

    def shortcut(self, u: fx.Node, v: fx.Node, src: int) -> _Fork | None:
        """A fork when user ``u`` of position value ``v`` starts a residual shortcut: an
        identity (possibly through transparent ops such as timm's ``nn.Identity``
        downsample) or a projection."""
        nodes, x = [], v
        while self.transparent(u, x) and len(u.users) == 1:
            nodes.append(u)
            x, u = u, next(iter(u.users))
        if self.residual_add(u):
            return _Fork(src, u, None, tuple(nodes))
        if nodes:
            return None
        fork = self.projection(u, v)
        if fork is not None:
            fork.src = src
        return fork

    # ---- the walk ------------------------------------------------------------------------

    def walk(self, pad_node: fx.Node | None, conv: fx.Node) -> tuple[_ChainBuilder, str, bool]:
        """Grow a chain from ``conv``; returns it, why it ended, and whether the end is free."""
        chain = _ChainBuilder()
        v0 = pad_node.args[0] if pad_node is not None else conv.args[0]
        chain.positions.append(v0)  # type: ignore[arg-type]
        first = pad_node or conv
        others = [u for u in v0.users if u is not first]  # type: ignore[union-attr]
        if len(others) == 1 and (fork := self.shortcut(others[0], v0, 0)) is not None:  # type: ignore[arg-type]
            chain.forks.append(fork)
        while True:
            self.position(chain, pad_node, conv)
            v = chain.positions[-1]
            step = self.next_conv(chain, v, list(v.users))
            if isinstance(step, str):
                reason, free = step, step.startswith("excluded")
                break
            pad_node, conv = step
        open_src = [f.src for f in chain.forks if f.src > 0]
        if open_src:
            chain.truncate(min(open_src))
            reason, free = f"position {min(open_src)} has several users (no residual)", False
        return chain, reason, free

    def next_conv(
        self, chain: _ChainBuilder, v: fx.Node, users: list[fx.Node]
    ) -> tuple[fx.Node | None, fx.Node] | str:
        """The next (pad, conv) after position value ``v``, opening a fork if needed; or the
        reason the chain ends."""
        if len(users) == 1 and (step := self.entry(v, users[0])) is not None:
            return step
        if len(users) == 2:
            src = len(chain.convs)
            for body, other in (users, users[::-1]):
                step = self.entry(v, body)
                if step is not None and (fork := self.shortcut(other, v, src)) is not None:
                    chain.forks.append(fork)
                    return step
        if not users:
            return "value unused"
        if len(users) == 1:
            u = users[0]
            target = (
                next(iter(u.users)) if self.zero_pad(u) is not None and len(u.users) == 1 else u
            )
            if self.excluded(target):
                return f"excluded conv {target.target}"
            return f"before {self.describe(u)}"
        return f"value used by {len(users)} ops: " + ", ".join(self.describe(u) for u in users)

    def position(self, chain: _ChainBuilder, pad_node: fx.Node | None, conv: fx.Node) -> None:
        """Consume conv p and its tail (BN, transparent ops, residual add, activation)."""
        p = len(chain.convs) + 1
        v, bn, act, added, transparent = conv, None, None, False, []
        while len(v.users) == 1:
            u = next(iter(v.users))
            if v is conv and (bn := self.batchnorm(u, v)) is not None:
                v = u
                if bn["bn_kind"] == "norm_act" and bn["act"] is not None:
                    m = self.module(u).act  # type: ignore[union-attr]
                    act = ActivationSlot(
                        p, u.name, "norm_act", bn["act"], f"{u.target}.act",
                        patterns.module_activation_params(bn["act"], m),
                        bool(getattr(m, "inplace", False)), m,
                    )  # fmt: skip
                continue
            if self.transparent(u, v):
                transparent.append(u.name)
                v = u
                continue
            if act is None and not added and self.residual_add(u):
                if not chain.forks or chain.forks[-1].add is not u:
                    break
                other = u.args[1] if u.args[0] is v else u.args[0]
                if _shape(other) != _shape(v):  # type: ignore[arg-type]
                    break
                fork = chain.forks.pop()
                kind = "identity" if fork.shortcut is None else "projection"
                chain.residuals.append(Residual(fork.src, p, kind, u.name, fork.shortcut))
                chain.shortcut_nodes[p] = fork.nodes
                added, v = True, u
                continue
            if act is None and (act := self.activation(u, v, p)) is not None:
                v = u
                continue
            break
        chain.convs.append(self.conv_info(conv, pad_node, bn))
        chain.conv_nodes.append(conv)
        chain.positions.append(v)
        if act is not None:
            chain.activations[p] = act
        if transparent:
            chain.transparent[p] = tuple(transparent)


def _barriers(convs: list[ConvInfo], strided: Literal["general", "paper"]) -> frozenset[int]:
    """Positions no block may straddle.

    ``paper``: after every strided conv (the original's ``str_pos``). Always: a conv with
    non-zero padding of another mode than zeros starts a group (break before it), and the
    next conv with padding starts another, so that no zero padding is moved into its group.
    """
    num = len(convs)
    out: set[int] = set()
    if strided == "paper":
        out |= {p + 1 for p, c in enumerate(convs, 1) if c.stride != (1, 1)}
    padded = [p for p, c in enumerate(convs, 1) if any(c.padding)]
    for p in padded:
        if convs[p - 1].padding_mode != "zeros":
            out.add(p - 1)
            out.update(q - 1 for q in padded[padded.index(p) + 1 :][:1])
    return frozenset(b for b in out if 0 < b < num)


def find_chains(
    gm: fx.GraphModule,
    *,
    strided: Literal["general", "paper"] = "general",
    exclude: Iterable[str] = (),
    min_convs: int = 1,
) -> list[Chain]:
    """All conv chains of a captured graph (``capture`` output, with tensor_meta), in graph
    order of their first conv; see the module docstring for the pattern."""
    patterns.load_defaults()
    finder = _Finder(gm, exclude)
    conv_names = {n.name for n in gm.graph.nodes if n.op == "call_module"} | {
        n.target for n in gm.graph.nodes if n.op == "call_module"
    }
    unknown = sorted(set(exclude) - conv_names)
    if unknown:
        raise DepthFXError(f"exclude names no module or node of the graph: {', '.join(unknown)}")
    chains: list[Chain] = []
    for node in list(gm.graph.nodes):
        if not finder.chain_conv(node):
            continue
        chain, reason, free = finder.walk(finder.pad_before(node), node)
        finder.assigned.update(chain.conv_nodes)
        for r in chain.residuals:
            finder.assigned.update(n for n in chain.shortcut_nodes[r.dst] if finder.conv_kind(n))
        if len(chain.convs) < min_convs:
            continue
        chains.append(
            Chain(
                index=len(chains),
                convs=chain.convs,
                activations=chain.activations,
                residuals=chain.residuals,
                barriers=_barriers(chain.convs, strided),
                optional=frozenset(range(1, len(chain.convs) + 1)) - set(chain.activations),
                input_node=chain.positions[0].name,
                position_nodes=[n.name for n in chain.positions],
                transparent=chain.transparent,
                end_reason=reason,
                free_end=free,
            )
        )
    return chains
