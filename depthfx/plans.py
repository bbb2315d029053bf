"""The Plan: which activations each chain keeps (A), where it is cut into merge groups (S) and
which convs it prunes (LayerMerge: replaced by the identity, with their BN).

A Plan is the contract between the solver and the rewrite passes. Per chain it names the convs
it was made for (so applying it to another model fails loudly), the kept activation positions
A, the merge boundaries S (A ⊆ S, the chain end L ∈ S) and the pruned positions. The kept convs
between two consecutive elements of S ∪ {0} become one conv. It round-trips through JSON (plans
written before pruning existed load with nothing pruned).
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from depthfx.errors import DepthFXError
from depthfx.io import write_json

if TYPE_CHECKING:
    from depthfx.records import Analysis
    from depthfx.solver import Solution


class PlanError(DepthFXError, ValueError):
    """A plan is inconsistent with itself or with the model it is applied to."""


@dataclass(frozen=True)
class ChainPlan:
    """A, S and the pruned convs of one chain; ``convs`` are its conv node names, in order.

    ``pruned``: positions p whose conv p (and its BN) becomes the identity; every merge group
    keeps at least one conv (LayerMerge's rule: an all-pruned block has no merged conv)."""

    convs: tuple[str, ...]
    act_pos: tuple[int, ...]
    merge_pos: tuple[int, ...]
    pruned: tuple[int, ...] = ()

    @property
    def num_convs(self) -> int:
        return len(self.convs)

    def groups(self) -> list[tuple[int, int]]:
        """Merge groups as blocks (i, j): convs i+1 … j become one conv."""
        bounds = [0, *self.merge_pos]
        return list(itertools.pairwise(bounds))

    def validate(
        self,
        barriers: Iterable[int] = (),
        residuals: Iterable[tuple[int, int]] = (),
    ) -> None:
        """Raise PlanError unless A ⊆ S, L ∈ S, barriers ⊆ S, every residual body is either
        wholly inside one group or has both ends in S (spec §1.2), and every group keeps a conv."""
        a, s, length = set(self.act_pos), set(self.merge_pos), self.num_convs
        where = f"chain starting at {self.convs[0]!r}" if self.convs else "empty chain"
        if any(not 1 <= p <= length for p in a | s | set(self.pruned)):
            raise PlanError(f"{where}: positions must lie in 1..{length}")
        for start, end in self.groups():
            if set(range(start + 1, end + 1)) <= set(self.pruned):
                raise PlanError(f"{where}: group {start}->{end} prunes all its convs")
        if not a <= s:
            raise PlanError(f"{where}: kept activations {sorted(a - s)} are not merge boundaries")
        if length not in s:
            raise PlanError(f"{where}: the chain end {length} must be a merge boundary")
        if missing := sorted(set(barriers) - s - {0}):
            raise PlanError(f"{where}: barriers {missing} are not merge boundaries")
        for src, dst in residuals:
            inside = [p for p in s if src < p < dst]
            if inside and not (src in s | {0} and dst in s):
                raise PlanError(
                    f"{where}: residual {src}->{dst} is cut at {inside} but its ends are not "
                    "both merge boundaries"
                )


@dataclass(frozen=True)
class Plan:
    """Per-chain A and S plus what the plan was made from and what it predicts."""

    chains: tuple[ChainPlan, ...]
    input_shapes: tuple[tuple[int, ...], ...] = ()
    strided: str = "general"
    exclude: tuple[str, ...] = ()
    budget_ms: float | None = None
    predicted_ms: float | None = None
    objective: float | None = None
    fingerprints: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_analysis(cls, analysis: Analysis, chains: Sequence[ChainPlan], **fields: Any) -> Plan:
        """A plan over ``chains`` that records how ``analysis`` was made (input shapes, stride
        rule, excluded convs), so that ``prepare`` re-captures the model the same way.
        ``fields``: the remaining Plan fields (budget, prediction, fingerprints)."""
        return cls(
            chains=tuple(chains),
            input_shapes=tuple(tuple(s) for s in analysis.example_shapes),
            strided=analysis.options["strided"],
            exclude=tuple(analysis.options["exclude"]),
            **fields,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        try:
            chains = tuple(
                ChainPlan(
                    convs=tuple(c["convs"]),
                    act_pos=tuple(int(p) for p in c["act_pos"]),
                    merge_pos=tuple(int(p) for p in c["merge_pos"]),
                    pruned=tuple(int(p) for p in c.get("pruned", ())),
                )
                for c in data["chains"]
            )
            return cls(
                chains=chains,
                input_shapes=tuple(tuple(int(d) for d in s) for s in data.get("input_shapes", ())),
                strided=str(data.get("strided", "general")),
                exclude=tuple(data.get("exclude", ())),
                budget_ms=data.get("budget_ms"),
                predicted_ms=data.get("predicted_ms"),
                objective=data.get("objective"),
                fingerprints=dict(data.get("fingerprints", {})),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise PlanError(f"not a depthfx plan: {err!r}") from err

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the plan as JSON atomically (never a half-written file)."""
        path = Path(path)
        write_json(path, self.to_json())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Plan:
        with open(path) as f:
            return cls.from_json(json.load(f))


def sorted_positions(positions: Iterable[int]) -> tuple[int, ...]:
    """Positions as a sorted tuple without duplicates and without position 0."""
    return tuple(sorted({int(p) for p in positions} - {0}))


def chain_plan(
    convs: Sequence[str],
    act_pos: Iterable[int],
    merge_pos: Iterable[int],
    pruned: Iterable[int] = (),
) -> ChainPlan:
    """Build a ChainPlan from any iterables (the chain end is always added to S)."""
    merge = set(merge_pos) | {len(convs)}
    return ChainPlan(
        tuple(convs), sorted_positions(act_pos), sorted_positions(merge), sorted_positions(pruned)
    )


def solution_chains(analysis: Analysis, solution: Solution) -> tuple[ChainPlan, ...]:
    """The ChainPlans of a DP solution, one per chain of ``analysis``, in its order.

    S is the fastest S ⊇ A on the raw latency table (``solution.fastest_merge_pos``, spec §4.5)
    when the solver had that table, else DP2's. They differ where the paper's DP1 could not
    split a block: it splits only where every prefix is itself a valid block (spec §7.16), so
    across residuals it can keep a merged block that its single convs beat (EfficientNet-Lite0:
    a 13×13 merge of nine convs, 3× slower than the nine). A's time can only drop, so the
    budget still holds."""
    fastest = solution.fastest_merge_pos
    return tuple(
        chain_plan(
            [c.node for c in chain.convs],
            solution.chains[chain.index].act_pos,
            solution.chains[chain.index].merge_pos if fastest is None else fastest[chain.index],
        )
        for chain in analysis.chains
    )
