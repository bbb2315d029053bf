"""Importance tables of the two-stage DP (spec §3): raw scores h_raw(chain, st, end, st_act,
end_act) in the original ``importance.csv`` format with their normalisation, and I_ext with its
DP3 split points (``ext_importance_*.csv``).

Tables are immutable after construction; the derived table (``extended()``) is computed once
and cached. File formats and error reporting: :mod:`depthfx.solver.table_io`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np

from depthfx.errors import TableError
from depthfx.io import atomic_write
from depthfx.solver.extend_importance import extend_importance
from depthfx.solver.table_io import (
    ENTRIES,
    JsonTable,
    PathLike,
    chain_lengths,
    csv_text,
    entry_rows,
    location,
    parse_block,
    parse_flags,
    parse_float,
    parse_splits,
    read_csv_rows,
    store_row,
)

ImportanceKey = tuple[int, int, int, int, int]
Norm = Literal["default", "single", "all", "none"]

NORMS: tuple[str, ...] = ("default", "single", "all", "none")


class ImportanceTable(JsonTable):
    """Raw importance h_raw(chain, st, end, st_act, end_act) plus how to normalise it.

    ``norm`` and ``alpha`` follow spec §3.3: a mask selects rows (``default``: the original
    activation pattern's single layers plus (0, 1); ``single``: every one-conv block; ``all``:
    every row; ``none``: no normalisation), μ is their mean, and h = h_raw − α·μ for every row.
    """

    kind = "importance"

    def __init__(
        self,
        scores: Mapping[ImportanceKey, float],
        *,
        score: str = "val_acc",
        norm: Norm = "single",
        alpha: float = 1.0,
        default_acts: Mapping[int, Iterable[int]] | Iterable[int] | None = None,
        meta: Mapping[str, Any] | None = None,
        source: str = ENTRIES,
        rows: Mapping[ImportanceKey, int] | None = None,
    ) -> None:
        if norm not in NORMS:
            raise TableError(f"{source}: unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
        self.scores = dict(scores)  # file order: the mean is summed in this order
        self.score = score
        self.norm = norm
        self.alpha = float(alpha)
        self.meta = dict(meta or {})
        self.source = source
        self.rows = dict(rows) if rows is not None else {k: n for n, k in enumerate(scores, 1)}
        self.lengths = chain_lengths(self.scores)
        self.default_acts = _default_acts(default_acts, self.lengths, source)
        if norm == "default" and self.default_acts is None:
            raise TableError(f"{source}: norm 'default' needs default_acts (the original pattern)")
        self._extended: ExtendedImportanceTable | None = None

    @classmethod
    def measure(
        cls, model: Any, example_inputs: Any, data: Any = None, method: Any = "proxy", **opts: Any
    ) -> ImportanceTable:
        """Score every extended block of ``model`` (``method``: ``"proxy"``, ``"finetune"`` or a
        callable; see :func:`depthfx.measure.importance.measure_importance` for ``opts``)."""
        from depthfx.measure.importance import measure_importance

        return measure_importance(model, example_inputs, data, method, **opts)

    @classmethod
    def from_entries(
        cls,
        entries: Mapping[Any, Any] | Iterable[Any],
        *,
        score: str = "score",
        norm: Norm = "single",
        alpha: float = 1.0,
        default_acts: Mapping[int, Iterable[int]] | Iterable[int] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> ImportanceTable:
        """Build from ``{(chain, st, end, st_act, end_act): score}`` (chain may be omitted) or
        rows ``(chain, st, end, st_act, end_act, score)``."""
        scores: dict[ImportanceKey, float] = {}
        for n, row in enumerate(entry_rows(entries, 5), start=1):
            if len(row) != 6:
                raise TableError(
                    f"{location(ENTRIES, n)}: expected (chain, st, end, st_act, end_act, score)"
                )
            key = (*parse_block(ENTRIES, n, *row[:3]), *parse_flags(ENTRIES, n, row[3], row[4]))
            store_row(ENTRIES, n, scores, key, parse_float(ENTRIES, n, score, row[5]))
        return cls(
            scores, score=score, norm=norm, alpha=alpha, default_acts=default_acts, meta=meta
        )

    @classmethod
    def read_csv(
        cls,
        path: PathLike,
        *,
        score: str = "val_acc",
        norm: Norm = "single",
        alpha: float = 1.0,
        default_acts: Mapping[int, Iterable[int]] | Iterable[int] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> ImportanceTable:
        """Read the original ``importance.csv``: an unnamed index column, then ``id, st, end,
        st_act, end_act, train_loss, train_acc, val_loss, val_acc``; ``score`` picks the
        column. Any table with ``st, end, st_act, end_act`` and the score column works."""
        src = str(path)
        scores: dict[ImportanceKey, float] = {}
        line_of: dict[ImportanceKey, int] = {}
        for line, r in read_csv_rows(path, ("st", "end", "st_act", "end_act", score)):
            blk = parse_block(src, line, r.get("chain", "0"), r["st"], r["end"])
            key = (*blk, *parse_flags(src, line, r["st_act"], r["end_act"]))
            store_row(src, line, scores, key, parse_float(src, line, score, r[score]))
            line_of[key] = line
        if not scores:
            raise TableError(f"{src}: line 2: no rows")
        return cls(
            scores,
            score=score,
            norm=norm,
            alpha=alpha,
            default_acts=default_acts,
            meta=meta,
            source=src,
            rows=line_of,
        )

    def normalised(self) -> dict[ImportanceKey, float]:
        """h = h_raw − α·μ (spec §3.3). μ is a NumPy (pairwise) mean in row order, like the
        pandas ``DataFrame.mean`` of the original."""
        if self.norm == "none":
            return dict(self.scores)
        keys = list(self.scores)
        if self.norm == "single":
            mask = [k for k in keys if k[2] - k[1] == 1]
        elif self.norm == "all":
            mask = keys
        else:
            acts = self.default_acts or {}
            mask = [
                k
                for k in keys
                if (
                    k[2] - k[1] == 1
                    and (k[3] == 1) == (k[1] in acts.get(k[0], ()))
                    and (k[4] == 1) == (k[2] in acts.get(k[0], ()))
                )
                or (k[1] == 0 and k[2] == 1)
            ]
            expected = sum(self.lengths.values())
            if len(mask) != expected:
                raise TableError(
                    f"{self.source}: norm 'default' selects {len(mask)} rows, expected one per "
                    f"position ({expected}); does default_acts match the table?"
                )
        if not mask:
            raise TableError(f"{self.source}: norm {self.norm!r} selects no rows")
        values = np.array([self.scores[k] for k in mask], dtype=np.float64)
        shift = self.alpha * float(np.add.reduce(values) / len(values))
        return {k: v - shift for k, v in self.scores.items()}

    def extended(self) -> ExtendedImportanceTable:
        """I_ext by DP3 (spec §3.5) on the normalised scores, computed once per table."""
        if self._extended is None:
            h = self.normalised()
            values: dict[ImportanceKey, float] = {}
            splits: dict[ImportanceKey, tuple[int, ...]] = {}
            for c in self.lengths:
                chain_h = {k[1:]: v for k, v in h.items() if k[0] == c}
                for key, (v, b) in extend_importance(chain_h).items():
                    values[(c, *key)], splits[(c, *key)] = v, b
            meta = {**self.meta, "score": self.score, "norm": self.norm, "alpha": self.alpha}
            self._extended = ExtendedImportanceTable(
                values, splits, meta=meta, source=self.source, rows=self.rows
            )
        return self._extended

    def _json_fields(self) -> dict[str, Any]:
        acts = self.default_acts
        return {
            "score": self.score,
            "norm": self.norm,
            "alpha": self.alpha,
            "default_acts": None if acts is None else {str(c): sorted(a) for c, a in acts.items()},
            "entries": [[*k, v] for k, v in self.scores.items()],
        }

    @classmethod
    def read_json(cls, path: PathLike) -> ImportanceTable:
        """Load a table saved by :meth:`write_json` (normalisation settings included)."""
        doc = cls._load_json(path)
        acts = doc.get("default_acts")
        table = cls.from_entries(
            doc.get("entries", []),
            score=doc.get("score", "score"),
            norm=doc.get("norm", "single"),
            alpha=doc.get("alpha", 1.0),
            default_acts=None if acts is None else {int(c): a for c, a in acts.items()},
        )
        table.meta, table.source = dict(doc.get("meta") or {}), str(path)
        return table


class ExtendedImportanceTable(JsonTable):
    """I_ext(chain, st, end, st_act, end_act) with the DP3 split points ``splits`` (spec §3.5;
    the original code's CSV column ``breaks``)."""

    kind = "extended_importance"

    def __init__(
        self,
        values: Mapping[ImportanceKey, float],
        splits: Mapping[ImportanceKey, tuple[int, ...]],
        *,
        meta: Mapping[str, Any] | None = None,
        source: str = ENTRIES,
        rows: Mapping[ImportanceKey, int] | None = None,
    ) -> None:
        self.values = dict(sorted(values.items(), key=_ext_order))
        self.splits = {k: tuple(splits[k]) for k in self.values}
        self.meta = dict(meta or {})
        self.source = source
        self.rows = dict(rows) if rows is not None else {k: n for n, k in enumerate(values, 1)}
        self.lengths = chain_lengths(self.values)

    @classmethod
    def read_csv(
        cls, path: PathLike, *, meta: Mapping[str, Any] | None = None
    ) -> ExtendedImportanceTable:
        """Read the original ``ext_importance_*.csv`` (``id, st, end, st_act, end_act, imp,
        breaks``)."""
        src = str(path)
        values: dict[ImportanceKey, float] = {}
        splits: dict[ImportanceKey, tuple[int, ...]] = {}
        rows: dict[ImportanceKey, int] = {}
        for line, r in read_csv_rows(path, ("st", "end", "st_act", "end_act", "imp", "breaks")):
            blk = parse_block(src, line, r.get("chain", "0"), r["st"], r["end"])
            key = (*blk, *parse_flags(src, line, r["st_act"], r["end_act"]))
            store_row(src, line, values, key, parse_float(src, line, "imp", r["imp"]))
            splits[key] = parse_splits(src, line, blk, r["breaks"])
            rows[key] = line
        if not values:
            raise TableError(f"{src}: line 2: no rows")
        return cls(values, splits, meta=meta, source=src, rows=rows)

    def write_csv(self, path: PathLike) -> None:
        """Write in the ``ext_importance_*.csv`` format."""
        multi = any(k[0] for k in self.values)
        header = [
            "id",
            *(["chain"] if multi else []),
            *("st", "end", "st_act", "end_act", "imp", "breaks"),
        ]
        rows = (
            [n, *(k if multi else k[1:]), v, ",".join(map(str, self.splits[k]))]
            for n, (k, v) in enumerate(self.values.items())
        )
        atomic_write(path, csv_text(header, rows))

    def _json_fields(self) -> dict[str, Any]:
        return {"entries": [[*k, v, list(self.splits[k])] for k, v in self.values.items()]}

    @classmethod
    def read_json(cls, path: PathLike) -> ExtendedImportanceTable:
        """Load a table saved by :meth:`write_json`."""
        doc = cls._load_json(path)
        src = str(path)
        values: dict[ImportanceKey, float] = {}
        splits: dict[ImportanceKey, tuple[int, ...]] = {}
        for n, e in enumerate(doc.get("entries", []), start=1):
            if not isinstance(e, list) or len(e) != 7:
                raise TableError(
                    f"{src}: entry {n}: expected [chain, st, end, sa, ea, imp, breaks]"
                )
            blk = parse_block(src, n, *e[:3])
            key = (*blk, *parse_flags(src, n, e[3], e[4]))
            store_row(src, n, values, key, parse_float(src, n, "imp", e[5]))
            splits[key] = parse_splits(src, n, blk, e[6])
        return cls(values, splits, meta=doc.get("meta"), source=src)


def _ext_order(item: tuple[ImportanceKey, Any]) -> tuple[int, ...]:
    """Spec §3.5 order: (chain, st, end) ascending, flags (1,1), (1,0), (0,1), (0,0)."""
    c, s, e, sa, ea = item[0]
    return c, s, e, -sa, -ea


def _default_acts(
    acts: Mapping[int, Iterable[int]] | Iterable[int] | None, lengths: Mapping[int, int], src: str
) -> dict[int, frozenset[int]] | None:
    """Per-chain original activation pattern; a plain set is allowed for one-chain tables."""
    if acts is None:
        return None
    if isinstance(acts, Mapping):
        return {int(c): frozenset(int(p) for p in a) for c, a in acts.items()}
    if set(lengths) - {0}:
        raise TableError(f"{src}: default_acts must map chain -> positions for several chains")
    return {0: frozenset(int(p) for p in acts)}
