"""What ``prepare`` records on a prepared network for ``convert`` (and ``verify``) to read.

One :class:`GroupRecord` per merge group: its input and output nodes, the padding ``prepare``
moved to its input, its kept convs (with their padding before the move and their BN), the
residuals fused inside it and the positions whose conv it pruned. :class:`PreparedInfo`
bundles them with the plan and the example shapes, attached to the prepared GraphModule as
``PREPARED_ATTR``.
"""

from __future__ import annotations

from dataclasses import dataclass

from depthfx.algebra import Padding4
from depthfx.plans import Plan
from depthfx.records import ConvInfo

PREPARED_ATTR = "depthfx_prepared"


@dataclass(frozen=True)
class ConvStep:
    """One conv of a group: its module, its padding before the move, and the BN after it
    (a module — plain or timm BN+act — or an ``F.batch_norm`` with ``get_attr`` statistics)."""

    module: str
    padding: Padding4
    bn: str | None = None
    bn_kind: str | None = None
    bn_attrs: tuple[str | None, ...] | None = None
    bn_eps: float | None = None

    @classmethod
    def of(cls, conv: ConvInfo) -> ConvStep:
        return cls(conv.module, conv.padding, conv.bn, conv.bn_kind, conv.bn_attrs, conv.bn_eps)


@dataclass(frozen=True)
class ResidualStep:
    """A residual fused inside a group: body = the group's convs src+1 … dst."""

    src: int
    dst: int
    kind: str
    shortcut: ConvStep | None


@dataclass(frozen=True)
class GroupRecord:
    """What ``convert`` needs to replace one merge group by one conv (``convs``: the kept
    ones, in chain order)."""

    chain: int
    start: int
    end: int
    input: str
    output: str
    pad: Padding4
    convs: tuple[ConvStep, ...]
    residuals: tuple[ResidualStep, ...]
    pruned: tuple[int, ...] = ()

    @property
    def positions(self) -> tuple[int, ...]:
        """The chain position of each of ``convs`` (the group's positions minus ``pruned``)."""
        pruned = set(self.pruned)
        return tuple(p for p in range(self.start + 1, self.end + 1) if p not in pruned)

    @property
    def name(self) -> str:
        """Prefix of the merged modules ``convert`` registers for this group."""
        return f"depthfx_merged_{self.chain}_{self.start}_{self.end}"

    def describe(self) -> str:
        first, last = self.convs[0].module, self.convs[-1].module
        return f"group {self.start}->{self.end} of chain {self.chain} ({first} … {last})"


@dataclass(frozen=True)
class PreparedInfo:
    """Attached to a prepared GraphModule as ``depthfx_prepared``."""

    plan: Plan
    groups: tuple[GroupRecord, ...]
    example_shapes: tuple[tuple[int, ...], ...]


__all__ = [
    "PREPARED_ATTR",
    "ConvStep",
    "GroupRecord",
    "PreparedInfo",
    "ResidualStep",
]
