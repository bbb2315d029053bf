"""The chain records, the result of graph analysis: conv chains, their positions, activation
slots and residuals.

Every later stage works on these records: the solver reads block structure (valid and
extended blocks), the latency/importance tables read conv shapes, ``prepare`` rewrites
activation slots and moves padding, ``merge`` folds BN and composes convs. All graph
references are fx node names / module qualified names of :attr:`Analysis.graph_module`.

Position p of a chain of L convs is the output of conv p after its BN, after the residual
add when p is a residual target, and after its activation slot; position 0 is the chain input.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import fx, nn

from depthfx.blocks import Block, ExtendedBlock, close_residuals, extended_blocks, valid_blocks

Pair = tuple[int, int]
Strided = Literal["general", "paper"]


@dataclass(frozen=True)
class ConvInfo:
    """One ``nn.Conv2d`` call site with the BN folded after it.

    ``padding`` is the effective zero padding per side (top, bottom, left, right): the
    module's own padding (``"same"`` resolved, timm dynamic-same computed from the traced
    input size) plus an absorbed zero-pad node (``pad_node``) right before the conv.
    ``input_shape`` is the shape before that pad. ``bn_kind`` is ``"module"`` (a BN module
    ``bn``), ``"norm_act"`` (a timm BN+act module ``bn``; its activation is a separate slot)
    or ``"function"`` (``F.batch_norm`` whose statistics are the ``get_attr`` targets
    ``bn_attrs`` = (running_mean, running_var, weight, bias)).
    """

    node: str
    module: str
    in_channels: int
    out_channels: int
    kernel: Pair
    stride: Pair
    dilation: Pair
    groups: int
    padding: tuple[int, int, int, int]
    padding_mode: str
    bias: bool
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    conv_kind: Literal["conv2d", "conv2d_same"] = "conv2d"
    pad_node: str | None = None
    bn: str | None = None
    bn_node: str | None = None
    bn_kind: Literal["module", "norm_act", "function"] | None = None
    bn_attrs: tuple[str | None, str | None, str | None, str | None] | None = None
    bn_eps: float | None = None

    @property
    def is_depthwise(self) -> bool:
        """One filter per input channel (groups == in_channels); may multiply channels."""
        return self.groups == self.in_channels and self.groups > 1

    @property
    def preserves_shape(self) -> bool:
        """Output shape == input shape (channels, stride 1, "same" size): the conv may be
        pruned, i.e. replaced by the identity with its BN (LayerMerge, spec §7.3). Decided on
        the traced shapes, so dilation, padding and groups need no rule of their own."""
        return self.input_shape == self.output_shape

    @property
    def output_node(self) -> str:
        """The fx node of the conv's output after its BN (before any add/activation)."""
        return self.bn_node or self.node


@dataclass(frozen=True)
class ActivationSlot:
    """An activation call site at a chain position.

    ``kind``: ``"module"`` (``module`` is its qualified name; one module called at several
    sites gives one slot per call node), ``"function"``, ``"method"``, or ``"norm_act"``
    (the ``act`` submodule ``module`` of a timm BN+act module called at ``node``).
    ``op`` is the canonical name (``"relu"``, ``"hardswish"``, …) and ``params`` its
    parameters (``negative_slope``, ``min_val``/``max_val``, ``approximate``, …).
    """

    position: int
    node: str
    kind: Literal["module", "function", "method", "norm_act"]
    op: str
    module: str | None = None
    params: dict[str, Any] = field(default_factory=dict, hash=False)
    inplace: bool = False
    template: nn.Module | None = field(default=None, repr=False, compare=False, hash=False)

    def make(self) -> nn.Module:
        """A fresh, out-of-place module computing this activation (a copy of the module
        itself, parameters such as PReLU weights included, for module kinds)."""
        from depthfx.patterns import make_activation

        if self.template is None:
            return make_activation(self.op, dict(self.params))
        module = copy.deepcopy(self.template)
        if hasattr(module, "inplace"):
            module.inplace = False
        return module


@dataclass(frozen=True)
class Residual:
    """A residual add closing at position ``dst`` whose shortcut starts at position ``src``.

    The body is convs src+1 … dst; the add comes after BN_dst and before the activation slot
    of ``dst``. ``shortcut`` is the projection conv (with its BN) for ``kind="projection"``.
    """

    src: int
    dst: int
    kind: Literal["identity", "projection"]
    add_node: str
    shortcut: ConvInfo | None = None


@dataclass
class Chain:
    """A maximal run conv → [BN] → [act] → conv … with only residual branching.

    ``barriers``: positions no merged block may straddle. ``optional``: positions linear in the
    original (they may receive an activation). ``position_nodes[p]``: the fx node holding
    position p's value (the last node of the position). ``transparent[p]``: dropout-like
    nodes (identity in eval) inside position p. ``free_end``: the chain ends at an excluded
    conv, so its end flag is free like any optional position (the paper's MBV2 chain);
    otherwise the end keeps the original's activation flag.
    """

    index: int
    convs: list[ConvInfo]
    activations: dict[int, ActivationSlot]
    residuals: list[Residual]
    barriers: frozenset[int]
    optional: frozenset[int]
    input_node: str
    position_nodes: list[str]
    transparent: dict[int, tuple[str, ...]] = field(default_factory=dict)
    end_reason: str = ""
    free_end: bool = False

    @property
    def num_convs(self) -> int:
        return len(self.convs)

    @property
    def default_acts(self) -> frozenset[int]:
        """Positions that carry an activation in the original network."""
        return frozenset(self.activations)

    @property
    def residual_map(self) -> dict[int, int]:
        """``{src: dst}`` as the original code's ``skip_s2t``."""
        return {r.src: r.dst for r in self.residuals}

    @property
    def pinned_flags(self) -> dict[int, int]:
        """Activation flags the solver may not change: the chain's true end keeps its own."""
        last = self.num_convs
        return {} if self.free_end else {last: int(last in self.activations)}

    @property
    def prunable(self) -> tuple[int, ...]:
        """Positions whose conv may be pruned: it preserves its input's shape. A residual body
        pruned empty computes x + x (an identity body, fused as 2·I); a projection residual
        needs a conv in its body (``prepare`` refuses an empty one)."""
        return tuple(p for p, c in enumerate(self.convs, 1) if c.preserves_shape)

    def conv(self, p: int) -> ConvInfo:
        """Conv p (1-based), the conv whose output is position p."""
        return self.convs[p - 1]

    def close_residuals(self, merge: Iterable[int]) -> set[int]:
        """``merge`` plus both ends of every residual body it cuts (spec §5.1 skip bumps)."""
        return close_residuals(merge, [(r.src, r.dst) for r in self.residuals])

    def valid_blocks(self) -> list[Block]:
        return valid_blocks(self.num_convs, self.barriers, [(r.src, r.dst) for r in self.residuals])

    def extended_blocks(self, exclude_zeros: bool = True) -> list[ExtendedBlock]:
        return extended_blocks(
            self.valid_blocks(),
            self.optional,
            exclude_zeros=exclude_zeros,
            pinned=self.pinned_flags,
        )

    def activation_for(self, p: int) -> ActivationSlot | None:
        """The activation a newly activated position p gets: its own original one, else the
        nearest preceding slot of the chain, else the nearest following; None if the chain
        has no activation at all."""
        if p in self.activations:
            return self.activations[p]
        before = [q for q in self.activations if q < p]
        after = [q for q in self.activations if q > p]
        if before:
            return self.activations[max(before)]
        return self.activations[min(after)] if after else None

    def to_json(self) -> dict[str, Any]:
        return {
            "num_convs": self.num_convs,
            "activations": sorted(self.activations),
            "residuals": [{"src": r.src, "dst": r.dst, "kind": r.kind} for r in self.residuals],
            "valid_blocks": len(self.valid_blocks()),
            "extended_blocks": len(self.extended_blocks()),
            "convs": [
                {
                    "name": c.module,
                    "kernel": list(c.kernel),
                    "stride": list(c.stride),
                    "groups": c.groups,
                    "in": c.in_channels,
                    "out": c.out_channels,
                    "node": c.node,
                    "dilation": list(c.dilation),
                    "padding": list(c.padding),
                    "input_shape": list(c.input_shape),
                    "output_shape": list(c.output_shape),
                    "bn": c.bn,
                }
                for c in self.convs
            ],
            "activation_ops": {str(p): s.op for p, s in sorted(self.activations.items())},
            "prunable": list(self.prunable),
            "barriers": sorted(self.barriers),
            "optional": sorted(self.optional),
            "end": self.end_reason,
        }

    def __str__(self) -> str:
        residual_at = {r.dst: r for r in self.residuals}
        header = (
            f"chain {self.index}: {self.num_convs} convs, {len(self.residuals)} residuals, "
            f"{len(self.activations)} activations, {len(self.valid_blocks())} valid blocks, "
            f"{len(self.extended_blocks())} extended blocks, {len(self.prunable)} prunable convs; "
            f"ends: {self.end_reason}"
        )
        rows = [("pos", "conv", "shape in -> out", "k", "s", "g", "act", "residual", "prune", "")]
        rows.append(("0", f"<{self.input_node}>", "", "", "", "", "", "", "", ""))
        for p, c in enumerate(self.convs, 1):
            shape = f"{_fmt(c.input_shape[1:])} -> {_fmt(c.output_shape[1:])}"
            act = self.activations[p].op if p in self.activations else "-"
            if p in self.optional:
                act += " (opt)"
            r = residual_at.get(p)
            res = f"{r.src}->{p} {r.kind}" if r else ""
            mark = "| break" if p in self.barriers else ""
            rows.append(
                (str(p), c.module, shape, _fmt(c.kernel, "x"), _fmt(c.stride, ","), str(c.groups),
                 act, res, "yes" if c.preserves_shape else "-", mark)
            )  # fmt: skip
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
        return "\n".join([header, *(line.rstrip() for line in lines)])


def _fmt(values: Sequence[int], sep: str = "x") -> str:
    return sep.join(str(v) for v in values)


@dataclass
class Analysis:
    """All chains of a captured model, in graph order of their first conv."""

    graph_module: fx.GraphModule
    chains: list[Chain]
    example_shapes: list[tuple[int, ...]]
    options: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "chains": [c.to_json() for c in self.chains],
            "example_shapes": [list(s) for s in self.example_shapes],
            "options": {k: list(v) if isinstance(v, tuple) else v for k, v in self.options.items()},
        }

    def __str__(self) -> str:
        convs = sum(c.num_convs for c in self.chains)
        head = (
            f"{type(self.graph_module).__name__}: {len(self.chains)} chains, {convs} convs in "
            f"chains, input {', '.join(_fmt(s) for s in self.example_shapes)}, "
            f"strided={self.options['strided']}"
        )
        return "\n\n".join([head, *(str(c) for c in self.chains)])
