"""LayerMerge (Kim et al., ICML 2024) tables in the original code's CSV formats, joined by key.

* Latency, ``time_*.csv`` (spec §2.4): ``id, st, end, ker, str, is_dw, time, stdev``; one row
  per (valid block, merged-conv shape), time in ms. An optional ``conv_comb`` column (an
  extension, written only when known) lets a block carry several kept subsets of one shape.
* Importance, ``normalized_importance.csv`` (spec §3.3): an unnamed index, then ``id, st, end,
  ker, str, is_dw, conv_comb, importance``. ``conv_comb`` is the kept subset, e.g. ``"(4, 5)"``.

The original pairs the two files by row position inside each block (pitfall 8); here rows are
joined on (st, end, ker, str, is_dw), plus ``conv_comb`` when the latency file has it, and a
missing or duplicate key is a :class:`depthfx.TableError` naming file, line and key. Each joined
row is a :class:`Variant`, identified by its block and kept subset (pitfall 4): two variants of
one block with the same kept subset are rejected. Writers are atomic (``depthfx.io``).
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from depthfx.errors import TableError
from depthfx.io import atomic_write
from depthfx.solver.table_io import (
    ENTRIES,
    csv_text,
    float_field,
    int_field,
    location,
    read_csv_rows,
)

PathLike = str | os.PathLike[str]
#: The original's join key of a row: (st, end, ker, str, is_dw).
ShapeKey = tuple[int, int, int, int, bool]
#: A variant's identity: (st, end, kept subset).
VariantKey = tuple[int, int, tuple[int, ...]]
_LATENCY_COLUMNS = ("st", "end", "ker", "str", "is_dw", "time", "stdev")
_IMPORTANCE_COLUMNS = ("st", "end", "ker", "str", "is_dw", "conv_comb", "importance")


@dataclass(frozen=True)
class Variant:
    """One table row: block (st, end) realised as one merged conv keeping the convs ``kept``."""

    st: int
    end: int
    ker: int
    stride: int
    is_dw: bool
    kept: tuple[int, ...]
    time: float
    stdev: float
    importance: float

    @property
    def block(self) -> tuple[int, int]:
        return self.st, self.end

    @property
    def shape(self) -> ShapeKey:
        return self.st, self.end, self.ker, self.stride, self.is_dw

    @property
    def key(self) -> VariantKey:
        return self.st, self.end, self.kept

    @property
    def childkey(self) -> str:
        """The original's name of the row inside its block (``children_dict`` values)."""
        return f"ker{self.ker}_str{self.stride}_is_dw_{self.is_dw}"

    @property
    def conv_comb(self) -> str:
        """The kept subset as the original writes it: ``"(4,)"``, ``"(4, 5)"``, ``"()"``."""
        return str(self.kept)


def describe(key: ShapeKey, kept: tuple[int, ...] | None = None) -> str:
    """Human-readable key for error messages."""
    st, end, ker, stride, dw = key
    extra = "" if kept is None else f", conv_comb={kept}"
    return f"(st={st}, end={end}, ker={ker}, str={stride}, is_dw={dw}{extra})"


# ----------------------------------------------------------------------------- parsing


def _bool(where: str, value: Any) -> bool:
    if isinstance(value, bool | np.bool_):
        return bool(value)
    text = str(value).strip().lower()
    if text not in ("true", "false"):
        raise TableError(f"{where}: is_dw={value!r} is not True or False")
    return text == "true"


def _shape(where: str, st: Any, end: Any, ker: Any, stride: Any, is_dw: Any) -> ShapeKey:
    s, e = int_field(where, "st", st), int_field(where, "end", end)
    k, r = int_field(where, "ker", ker), int_field(where, "str", stride)
    if s < 0 or s >= e:
        raise TableError(f"{where}: block (st={s}, end={e}) needs 0 <= st < end")
    if k < 0 or r < 1:
        raise TableError(f"{where}: ker={k} must be >= 0 and str={r} >= 1")
    return s, e, k, r, _bool(where, is_dw)


def _kept(where: str, key: ShapeKey, value: Any) -> tuple[int, ...]:
    """Parse ``conv_comb`` (``ast.literal_eval``, not the original's ``eval``)."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise TableError(
                f"{where}: variant {describe(key)}: conv_comb={value!r} is not a tuple"
            ) from None
    if not isinstance(value, tuple | list) or not all(
        isinstance(p, int) and not isinstance(p, bool) for p in value
    ):
        raise TableError(
            f"{where}: variant {describe(key)}: conv_comb={value!r} is not a tuple of ints"
        )
    kept = tuple(value)
    if list(kept) != sorted(set(kept)) or any(not key[0] < p <= key[1] for p in kept):
        raise TableError(
            f"{where}: variant {describe(key)}: conv_comb={kept} must increase and lie in "
            f"{key[0] + 1}..{key[1]}"
        )
    return kept


# ----------------------------------------------------------------------------- tables


class LayerMergeLatencyTable:
    """T(st, end, ker, str, is_dw): latency of each variant's merged conv + ReLU (spec §2)."""

    def __init__(
        self,
        rows: Iterable[tuple[ShapeKey, tuple[int, ...] | None, float, float]],
        *,
        unit: str = "ms",
        source: str = ENTRIES,
        lines: Iterable[int] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.source, self.unit = source, unit
        #: How the rows were measured (fingerprint, input shape, ...); empty for a CSV.
        self.meta: dict[str, Any] = dict(meta or {})
        self.rows: list[tuple[ShapeKey, tuple[int, ...] | None, float, float]] = []
        self.lines: list[int] = []
        first: dict[tuple[ShapeKey, tuple[int, ...] | None], int] = {}
        numbers = list(lines) if lines is not None else None
        for n, (key, kept, time, stdev) in enumerate(rows):
            line = numbers[n] if numbers is not None else n + 1
            where = location(source, line)
            key = _shape(where, *key)
            kept = None if kept is None else _kept(where, key, kept)
            time = float_field(f"{where}: variant {describe(key, kept)}", "time", time, nonneg=True)
            stdev = float_field(
                f"{where}: variant {describe(key, kept)}", "stdev", stdev, nonneg=True
            )
            if (key, kept) in first:
                raise TableError(
                    f"{where}: duplicate row for variant {describe(key, kept)} (first at line "
                    f"{first[key, kept]})"
                )
            if self.rows and (kept is None) != (self.rows[0][1] is None):
                raise TableError(f"{where}: conv_comb is given for some rows only")
            first[key, kept] = line
            self.rows.append((key, kept, time, stdev))
            self.lines.append(line)
        if not self.rows:
            raise TableError(f"{location(source, 2)}: no rows")

    @property
    def has_kept(self) -> bool:
        """Whether rows carry their kept subset (then the join also matches ``conv_comb``)."""
        return self.rows[0][1] is not None

    @classmethod
    def read_csv(cls, path: PathLike, *, unit: str = "ms") -> LayerMergeLatencyTable:
        """Read ``time_*.csv`` (optional ``conv_comb`` column)."""
        src, rows, lines = str(path), [], []
        for line, r in read_csv_rows(path, _LATENCY_COLUMNS):
            key = (r["st"], r["end"], r["ker"], r["str"], r["is_dw"])
            rows.append((key, r.get("conv_comb"), r["time"], r["stdev"]))
            lines.append(line)
        return cls(rows, unit=unit, source=src, lines=lines)

    def write_csv(self, path: PathLike) -> None:
        """Write the ``time_*.csv`` format (``conv_comb`` last, only if the rows have it)."""
        extra = ["conv_comb"] if self.has_kept else []
        rows = (
            [n, *k[:4], str(k[4]), t, s, *([str(kept)] if extra else [])]
            for n, (k, kept, t, s) in enumerate(self.rows)
        )
        atomic_write(path, csv_text(["id", *_LATENCY_COLUMNS, *extra], rows))


class LayerMergeImportanceTable:
    """I(st, end, ker, str, is_dw) with the kept subset ``conv_comb`` it was measured for."""

    def __init__(
        self,
        rows: Iterable[tuple[ShapeKey, tuple[int, ...] | str, float]],
        *,
        source: str = ENTRIES,
        lines: Iterable[int] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.source = source
        #: How the scores were measured (proxy fingerprint, ...); empty for a CSV.
        self.meta: dict[str, Any] = dict(meta or {})
        self.rows: list[tuple[ShapeKey, tuple[int, ...], float]] = []
        self.lines: list[int] = []
        first: dict[tuple[ShapeKey, tuple[int, ...]], int] = {}
        numbers = list(lines) if lines is not None else None
        for n, (key, kept, value) in enumerate(rows):
            line = numbers[n] if numbers is not None else n + 1
            where = location(source, line)
            key = _shape(where, *key)
            kept = _kept(where, key, kept)
            value = float_field(
                f"{where}: variant {describe(key, kept)}", "importance", value, nonneg=False
            )
            if (key, kept) in first:
                raise TableError(
                    f"{where}: duplicate row for variant {describe(key, kept)} (first at line "
                    f"{first[key, kept]})"
                )
            first[key, kept] = line
            self.rows.append((key, kept, value))
            self.lines.append(line)
        if not self.rows:
            raise TableError(f"{location(source, 2)}: no rows")

    @classmethod
    def read_csv(cls, path: PathLike) -> LayerMergeImportanceTable:
        """Read ``normalized_importance.csv`` (the index and ``id`` columns are ignored)."""
        src, rows, lines = str(path), [], []
        for line, r in read_csv_rows(path, _IMPORTANCE_COLUMNS):
            key = (r["st"], r["end"], r["ker"], r["str"], r["is_dw"])
            rows.append((key, r["conv_comb"], r["importance"]))
            lines.append(line)
        return cls(rows, source=src, lines=lines)

    @classmethod
    def from_raw_csv(cls, path: PathLike, score: str = "val_acc") -> LayerMergeImportanceTable:
        """Normalise the raw ``importance.csv`` as ``--mode normalize`` does: exp(score/100),
        with NumPy's exp over the whole column like the original's pandas code (spec §3.3)."""
        src, keys, combs, raw, lines = str(path), [], [], [], []
        for line, r in read_csv_rows(path, (*_IMPORTANCE_COLUMNS[:-1], score)):
            where = location(src, line)
            key = _shape(where, r["st"], r["end"], r["ker"], r["str"], r["is_dw"])
            keys.append(key)
            combs.append(r["conv_comb"])
            raw.append(
                float_field(f"{where}: variant {describe(key)}", score, r[score], nonneg=False)
            )
            lines.append(line)
        values = np.exp(np.array(raw, dtype=np.float64) / 100).tolist()
        return cls(zip(keys, combs, values, strict=True), source=src, lines=lines)

    def write_csv(self, path: PathLike) -> None:
        """Write the ``normalized_importance.csv`` format (leading unnamed index column)."""
        rows = ([n, n, *k[:4], str(k[4]), str(kept), v] for n, (k, kept, v) in enumerate(self.rows))
        atomic_write(path, csv_text(["", "id", *_IMPORTANCE_COLUMNS], rows))


class LayerMergeTable:
    """Latency and importance joined into :class:`Variant` rows, in latency-file order.

    ``by_end[end]`` lists the variants ending at ``end`` in the DP's scan order: st ascending,
    then file order (the original's dict order). ``length`` is L, the largest block end.
    """

    def __init__(
        self,
        variants: Iterable[Variant],
        *,
        unit: str = "ms",
        source: str = ENTRIES,
        lines: Iterable[int] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.variants = tuple(variants)
        self.unit, self.source = unit, source
        #: The halves' meta when joined: ``{"latency": ..., "importance": ...}``.
        self.meta: dict[str, Any] = dict(meta or {})
        if not self.variants:
            raise TableError(f"{source}: no rows")
        numbers = list(lines) if lines is not None else list(range(1, len(self.variants) + 1))
        seen: dict[VariantKey, int] = {}
        for v, line in zip(self.variants, numbers, strict=True):
            if v.key in seen:
                raise TableError(
                    f"{location(source, line)}: block (st={v.st}, end={v.end}) has two variants "
                    f"keeping {v.kept} (first at line {seen[v.key]}); variants are keyed by "
                    "their kept subset"
                )
            seen[v.key] = line
        self.length = max(v.end for v in self.variants)
        self.by_end: dict[int, list[Variant]] = {e: [] for e in range(1, self.length + 1)}
        for v in sorted(self.variants, key=lambda v: (v.end, v.st)):  # stable: file order
            self.by_end[v.end].append(v)

    @property
    def blocks(self) -> list[tuple[int, int]]:
        """The blocks that have at least one variant, in lexicographic order."""
        return sorted({v.block for v in self.variants})

    @classmethod
    def join(
        cls, latency: LayerMergeLatencyTable, importance: LayerMergeImportanceTable
    ) -> LayerMergeTable:
        """Pair rows by key: (st, end, ker, str, is_dw), plus conv_comb if latency has it."""
        with_kept = latency.has_kept
        imp: dict[tuple[Any, ...], tuple[int, tuple[int, ...], float]] = {}
        for (key, kept, value), line in zip(importance.rows, importance.lines, strict=True):
            jkey = (key, kept) if with_kept else key
            if jkey in imp:
                raise TableError(
                    f"{location(importance.source, line)}: duplicate row for variant "
                    f"{describe(key)} (first at line {imp[jkey][0]}); {latency.source} has no "
                    "conv_comb column, so rows are matched by (st, end, ker, str, is_dw)"
                )
            imp[jkey] = (line, kept, value)
        variants, used = [], set()
        for (key, kept, time, stdev), line in zip(latency.rows, latency.lines, strict=True):
            jkey = (key, kept) if with_kept else key
            if jkey not in imp:
                raise TableError(
                    f"{location(latency.source, line)}: variant {describe(key, kept)} has no "
                    f"importance row in {importance.source}"
                )
            used.add(jkey)
            _, imp_kept, value = imp[jkey]
            variants.append(Variant(*key, imp_kept, time, stdev, value))
        for jkey, (line, kept, _) in imp.items():
            if jkey not in used:
                key = jkey[0] if with_kept else jkey
                raise TableError(
                    f"{location(importance.source, line)}: variant {describe(key, kept)} has no "
                    f"latency row in {latency.source}"
                )
        source = (
            latency.source
            if latency.source == importance.source
            else f"{latency.source} + {importance.source}"
        )
        meta = {"latency": latency.meta, "importance": importance.meta}
        return cls(variants, unit=latency.unit, source=source, lines=latency.lines, meta=meta)

    @classmethod
    def read_csv(
        cls, latency: PathLike, importance: PathLike, *, unit: str = "ms"
    ) -> LayerMergeTable:
        """Read ``time_*.csv`` and ``normalized_importance.csv`` and join them by key."""
        return cls.join(
            LayerMergeLatencyTable.read_csv(latency, unit=unit),
            LayerMergeImportanceTable.read_csv(importance),
        )

    def latency(self, *, with_kept: bool = False) -> LayerMergeLatencyTable:
        """The latency half (``with_kept`` adds the ``conv_comb`` extension column)."""
        rows = [(v.shape, v.kept if with_kept else None, v.time, v.stdev) for v in self.variants]
        return LayerMergeLatencyTable(rows, unit=self.unit)

    def importance(self) -> LayerMergeImportanceTable:
        """The importance half."""
        return LayerMergeImportanceTable((v.shape, v.kept, v.importance) for v in self.variants)
