"""Latency tables of the two-stage DP (spec §2): T(chain, st, end) as measured, in the original
code's ``time_*.csv`` format, and T_opt with its DP1 split points (``opt_time_*.csv``).

Tables are immutable after construction; the derived table (``optimal()``) is computed once and
cached. File formats and error reporting: :mod:`depthfx.solver.table_io`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from depthfx.errors import TableError
from depthfx.io import atomic_write
from depthfx.solver.optimal_times import optimal_times
from depthfx.solver.table_io import (
    ENTRIES,
    JsonTable,
    PathLike,
    chain_lengths,
    csv_text,
    entry_rows,
    location,
    parse_block,
    parse_float,
    parse_splits,
    read_csv_rows,
    store_row,
)

LatencyKey = tuple[int, int, int]


class LatencyTable(JsonTable):
    """T(chain, st, end): measured latency of each valid block merged into one conv (spec §2.3).

    The rows are exactly the valid blocks; DP1 and DP2 treat a missing row as an invalid block.
    """

    kind = "latency"

    def __init__(
        self,
        times: Mapping[LatencyKey, float],
        stdevs: Mapping[LatencyKey, float],
        *,
        unit: str = "ms",
        meta: Mapping[str, Any] | None = None,
        source: str = ENTRIES,
        rows: Mapping[LatencyKey, int] | None = None,
    ) -> None:
        self.rows = dict(rows) if rows is not None else {k: n for n, k in enumerate(times, 1)}
        self.times = dict(sorted(times.items()))
        self.stdevs = {k: stdevs[k] for k in self.times}
        self.unit = unit
        self.meta = dict(meta or {})
        self.source = source
        self.lengths = chain_lengths(self.times)
        self._optimal: OptimalLatencyTable | None = None

    @classmethod
    def measure(
        cls, model: Any, example_inputs: Any, backend: str = "onnxruntime", **opts: Any
    ) -> LatencyTable:
        """Time every valid block of ``model`` on ``backend``, plus the end-to-end latency
        (see :func:`depthfx.measure.latency_table.measure_latency_table` for ``opts``)."""
        from depthfx.measure.latency_table import measure_latency_table

        return measure_latency_table(model, example_inputs, backend=backend, **opts)

    @classmethod
    def from_entries(
        cls,
        entries: Mapping[Any, Any] | Iterable[Any],
        *,
        unit: str = "ms",
        meta: Mapping[str, Any] | None = None,
    ) -> LatencyTable:
        """Build from ``{(chain, st, end): time | (time, stdev)}`` (the key may omit chain) or
        from rows ``(chain, st, end, time[, stdev])``; checks them like a CSV file."""
        times: dict[LatencyKey, float] = {}
        stdevs: dict[LatencyKey, float] = {}
        for n, row in enumerate(entry_rows(entries, 3), start=1):
            if len(row) not in (4, 5):
                raise TableError(
                    f"{location(ENTRIES, n)}: expected (chain, st, end, time[, stdev])"
                )
            key = parse_block(ENTRIES, n, *row[:3])
            store_row(ENTRIES, n, times, key, parse_float(ENTRIES, n, "time", row[3], nonneg=True))
            std = row[4] if len(row) == 5 else 0.0
            stdevs[key] = parse_float(ENTRIES, n, "stdev", std, nonneg=True)
        return cls(times, stdevs, unit=unit, meta=meta)

    @classmethod
    def read_csv(
        cls, path: PathLike, *, unit: str = "ms", meta: Mapping[str, Any] | None = None
    ) -> LatencyTable:
        """Read the paper's ``time_*.csv`` (columns ``id, st, end, time, stdev``, optional
        ``chain``). Also reads ``opt_time`` files; their ``breaks`` column is ignored."""
        src = str(path)
        times: dict[LatencyKey, float] = {}
        stdevs: dict[LatencyKey, float] = {}
        rows: dict[LatencyKey, int] = {}
        for line, r in read_csv_rows(path, ("st", "end", "time", "stdev")):
            key = parse_block(src, line, r.get("chain", "0"), r["st"], r["end"])
            store_row(src, line, times, key, parse_float(src, line, "time", r["time"], nonneg=True))
            stdevs[key] = parse_float(src, line, "stdev", r["stdev"], nonneg=True)
            rows[key] = line
        if not times:
            raise TableError(f"{src}: line 2: no rows")
        return cls(times, stdevs, unit=unit, meta=meta, source=src, rows=rows)

    def write_csv(self, path: PathLike) -> None:
        """Write in the ``time_*.csv`` format (``chain`` column only if a chain is not 0)."""
        multi = any(k[0] for k in self.times)
        header = ["id", *(["chain"] if multi else []), "st", "end", "time", "stdev"]
        rows = (
            [n, *(k if multi else k[1:]), self.times[k], self.stdevs[k]]
            for n, k in enumerate(self.times)
        )
        atomic_write(path, csv_text(header, rows))

    def optimal(self) -> OptimalLatencyTable:
        """T_opt by DP1 (spec §2.4), computed once per table."""
        if self._optimal is None:
            times: dict[LatencyKey, float] = {}
            stdevs: dict[LatencyKey, float] = {}
            splits: dict[LatencyKey, tuple[int, ...]] = {}
            for c in self.lengths:
                blocks = {k[1:]: (v, self.stdevs[k]) for k, v in self.times.items() if k[0] == c}
                for (st, end), (t, s, b) in optimal_times(blocks).items():
                    times[c, st, end], stdevs[c, st, end], splits[c, st, end] = t, s, b
            self._optimal = OptimalLatencyTable(
                times,
                stdevs,
                splits,
                unit=self.unit,
                meta=self.meta,
                source=self.source,
                rows=self.rows,
            )
        return self._optimal

    def _json_fields(self) -> dict[str, Any]:
        entries = [[*k, self.times[k], self.stdevs[k]] for k in self.times]
        return {"unit": self.unit, "entries": entries}

    @classmethod
    def read_json(cls, path: PathLike) -> LatencyTable:
        """Load a table saved by :meth:`write_json`, re-checking every entry."""
        doc = cls._load_json(path)
        table = cls.from_entries(doc.get("entries", []), unit=doc.get("unit", "ms"))
        table.meta, table.source = dict(doc.get("meta") or {}), str(path)
        return table


class OptimalLatencyTable(JsonTable):
    """T_opt(chain, st, end) with its DP1 split points ``splits`` (both ends included; the
    original code's CSV column ``breaks``)."""

    kind = "optimal_latency"

    def __init__(
        self,
        times: Mapping[LatencyKey, float],
        stdevs: Mapping[LatencyKey, float],
        splits: Mapping[LatencyKey, tuple[int, ...]],
        *,
        unit: str = "ms",
        meta: Mapping[str, Any] | None = None,
        source: str = ENTRIES,
        rows: Mapping[LatencyKey, int] | None = None,
    ) -> None:
        self.rows = dict(rows) if rows is not None else {k: n for n, k in enumerate(times, 1)}
        self.times = dict(sorted(times.items()))
        self.stdevs = {k: stdevs[k] for k in self.times}
        self.splits = {k: tuple(splits[k]) for k in self.times}
        self.unit = unit
        self.meta = dict(meta or {})
        self.source = source
        self.lengths = chain_lengths(self.times)

    @classmethod
    def read_csv(
        cls, path: PathLike, *, unit: str = "ms", meta: Mapping[str, Any] | None = None
    ) -> OptimalLatencyTable:
        """Read the paper's ``opt_time_*.csv`` (``id, st, end, time, stdev, breaks``)."""
        src = str(path)
        times: dict[LatencyKey, float] = {}
        stdevs: dict[LatencyKey, float] = {}
        splits: dict[LatencyKey, tuple[int, ...]] = {}
        rows: dict[LatencyKey, int] = {}
        for line, r in read_csv_rows(path, ("st", "end", "time", "stdev", "breaks")):
            key = parse_block(src, line, r.get("chain", "0"), r["st"], r["end"])
            store_row(src, line, times, key, parse_float(src, line, "time", r["time"], nonneg=True))
            stdevs[key] = parse_float(src, line, "stdev", r["stdev"], nonneg=True)
            splits[key] = parse_splits(src, line, key, r["breaks"])
            rows[key] = line
        if not times:
            raise TableError(f"{src}: line 2: no rows")
        return cls(times, stdevs, splits, unit=unit, meta=meta, source=src, rows=rows)

    def write_csv(self, path: PathLike) -> None:
        """Write in the ``opt_time_*.csv`` format; ``breaks`` is a quoted comma list."""
        multi = any(k[0] for k in self.times)
        header = ["id", *(["chain"] if multi else []), "st", "end", "time", "stdev", "breaks"]
        rows = (
            [
                n,
                *(k if multi else k[1:]),
                self.times[k],
                self.stdevs[k],
                ",".join(map(str, self.splits[k])),
            ]
            for n, k in enumerate(self.times)
        )
        atomic_write(path, csv_text(header, rows))

    def _json_fields(self) -> dict[str, Any]:
        entries = [[*k, self.times[k], self.stdevs[k], list(self.splits[k])] for k in self.times]
        return {"unit": self.unit, "entries": entries}

    @classmethod
    def read_json(cls, path: PathLike) -> OptimalLatencyTable:
        """Load a table saved by :meth:`write_json`, re-checking every entry."""
        doc = cls._load_json(path)
        src = str(path)
        times: dict[LatencyKey, float] = {}
        stdevs: dict[LatencyKey, float] = {}
        splits: dict[LatencyKey, tuple[int, ...]] = {}
        for n, e in enumerate(doc.get("entries", []), start=1):
            if not isinstance(e, list) or len(e) != 6:
                raise TableError(
                    f"{src}: entry {n}: expected [chain, st, end, time, stdev, breaks]"
                )
            key = parse_block(src, n, *e[:3])
            store_row(src, n, times, key, parse_float(src, n, "time", e[3], nonneg=True))
            stdevs[key] = parse_float(src, n, "stdev", e[4], nonneg=True)
            splits[key] = parse_splits(src, n, key, e[5])
        return cls(
            times, stdevs, splits, unit=doc.get("unit", "ms"), meta=doc.get("meta"), source=src
        )
