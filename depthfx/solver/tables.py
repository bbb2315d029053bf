"""Latency and importance tables of the two-stage DP (spec §2–§3), with the original code's CSV
formats and a JSON form that carries a ``meta`` dict (fingerprint of the measurement setting).

Every table is keyed by chain: latency by (chain, st, end), importance by
(chain, st, end, st_act, end_act). The paper's CSV files describe one chain; they are chain 0,
and an optional ``chain`` column (written only when a table has a chain other than 0) extends
the formats to several chains. Tables are immutable after construction; derived tables
(``optimal()``, ``extended()``) are computed once and cached.

Every input problem raises :class:`depthfx.TableError` naming the file (or ``<entries>``), the
row (1-based line number in the file, or entry number) and the problem. Writers go through a
temporary file in the target directory and ``os.replace``, so a failure never leaves a partial
file.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from depthfx.errors import TableError
from depthfx.io import atomic_write
from depthfx.solver.dp import extend_importance, optimal_times

LatencyKey = tuple[int, int, int]
ImportanceKey = tuple[int, int, int, int, int]
Norm = Literal["default", "single", "all", "none"]
PathLike = str | os.PathLike[str]

NORMS: tuple[str, ...] = ("default", "single", "all", "none")
_ENTRIES = "<entries>"
_JSON_VERSION = 1


# ----------------------------------------------------------------------------- I/O helpers


def _csv_text(header: list[str], rows: Iterable[list[Any]]) -> str:
    """CSV text with pandas-like quoting (only fields that need it, e.g. ``"0,1,2"``)."""

    class _Buf:
        def __init__(self) -> None:
            self.parts: list[str] = []

        def write(self, s: str) -> int:
            self.parts.append(s)
            return len(s)

    buf = _Buf()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[_fmt(v) for v in row] for row in rows])
    return "".join(buf.parts)


def _fmt(v: Any) -> str:
    """Shortest round-trip text for floats, so write → read is exact."""
    return repr(v) if isinstance(v, float) else str(v)


def _read_csv(path: PathLike, required: Iterable[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, row dict) for every data row; check the header has ``required``."""
    path = Path(path)
    try:
        f = path.open(newline="")
    except OSError as err:
        raise TableError(f"{path}: cannot open: {err.strerror}") from err
    with f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise TableError(f"{path}: line 1: empty file, expected a CSV header") from None
        header = [h.strip() for h in header]
        missing = [c for c in required if c not in header]
        if missing:
            raise TableError(
                f"{path}: line 1: missing column(s) {', '.join(missing)}; "
                f"header has: {', '.join(h or '<unnamed>' for h in header)}"
            )
        for fields in reader:
            if not fields or all(not x.strip() for x in fields):
                continue
            if len(fields) != len(header):
                raise TableError(
                    f"{path}: line {reader.line_num}: {len(fields)} fields, "
                    f"header has {len(header)}"
                )
            yield reader.line_num, dict(zip(header, (x.strip() for x in fields), strict=True))


def _where(source: str, row: int) -> str:
    return f"{source}: {'entry' if source == _ENTRIES else 'line'} {row}"


def _int(source: str, row: int, name: str, text: Any) -> int:
    try:
        value = float(text) if isinstance(text, str) else text
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise ValueError
        return int(value)
    except (TypeError, ValueError):
        raise TableError(f"{_where(source, row)}: {name}={text!r} is not an integer") from None


def _float(source: str, row: int, name: str, text: Any, *, nonneg: bool = False) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise TableError(f"{_where(source, row)}: {name}={text!r} is not a number") from None
    if not math.isfinite(value):
        raise TableError(f"{_where(source, row)}: {name} is {value}, expected a finite number")
    if nonneg and value < 0:
        raise TableError(f"{_where(source, row)}: {name}={value!r} is negative")
    return value


def _block(source: str, row: int, chain: Any, st: Any, end: Any) -> LatencyKey:
    c, s, e = (_int(source, row, n, v) for n, v in (("chain", chain), ("st", st), ("end", end)))
    if c < 0 or s < 0:
        raise TableError(f"{_where(source, row)}: chain and st must be >= 0 (got {c}, {s})")
    if s >= e:
        raise TableError(f"{_where(source, row)}: st={s} >= end={e}; a block needs st < end")
    return c, s, e


def _flag(source: str, row: int, name: str, text: Any) -> int:
    value = _int(source, row, name, text)
    if value not in (0, 1):
        raise TableError(f"{_where(source, row)}: {name}={value} is not 0 or 1")
    return value


def _breaks(source: str, row: int, key: LatencyKey, text: Any) -> tuple[int, ...]:
    items = text.split(",") if isinstance(text, str) else list(text)
    out = tuple(_int(source, row, "breaks", x) for x in items)
    if len(out) < 2 or out[0] != key[1] or out[-1] != key[2] or list(out) != sorted(set(out)):
        raise TableError(
            f"{_where(source, row)}: breaks {text!r} must increase from st={key[1]} to end={key[2]}"
        )
    return out


def _store(source: str, row: int, table: dict[Any, Any], key: Any, value: Any) -> None:
    if key in table:
        raise TableError(f"{_where(source, row)}: duplicate row for {_keyname(key)}")
    table[key] = value


def _keyname(key: tuple[int, ...]) -> str:
    names = ("chain", "st", "end", "st_act", "end_act")
    return "(" + ", ".join(f"{n}={v}" for n, v in zip(names, key, strict=False)) + ")"


def _entry_rows(entries: Mapping[Any, Any] | Iterable[Any], key_len: int) -> Iterator[list[Any]]:
    """Normalise ``{key: value}`` or an iterable of flat tuples to flat lists."""
    if isinstance(entries, Mapping):
        for key, value in entries.items():
            key = tuple(key)
            if len(key) == key_len - 1:  # key without chain: chain 0
                key = (0, *key)
            vals = list(value) if isinstance(value, tuple | list) else [value]
            yield [*key, *vals]
    else:
        yield from (list(e) for e in entries)


def _chain_lengths(keys: Iterable[tuple[int, ...]]) -> dict[int, int]:
    lengths: dict[int, int] = {}
    for key in keys:
        lengths[key[0]] = max(lengths.get(key[0], 0), key[2])
    return dict(sorted(lengths.items()))


class _Table:
    """Shared JSON handling: ``{"kind", "version", "meta", ...fields, "entries": [...]}``."""

    kind: str = ""
    source: str
    meta: dict[str, Any]

    def _json_fields(self) -> dict[str, Any]:
        raise NotImplementedError

    def write_json(self, path: PathLike) -> None:
        """Save the table and its ``meta`` (fingerprint etc.) as JSON, atomically."""
        doc = {"kind": self.kind, "version": _JSON_VERSION, "meta": self.meta}
        doc.update(self._json_fields())
        atomic_write(path, json.dumps(doc, indent=1, allow_nan=False) + "\n")

    @classmethod
    def _load_json(cls, path: PathLike) -> dict[str, Any]:
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
        except OSError as err:
            raise TableError(f"{path}: cannot open: {err.strerror}") from err
        except json.JSONDecodeError as err:
            raise TableError(f"{path}: line {err.lineno}: invalid JSON: {err.msg}") from None
        if not isinstance(doc, dict) or doc.get("kind") != cls.kind:
            found = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
            raise TableError(f"{path}: line 1: expected a {cls.kind!r} table, found {found!r}")
        if doc.get("version") != _JSON_VERSION:
            raise TableError(f"{path}: line 1: unsupported version {doc.get('version')!r}")
        return doc


# ----------------------------------------------------------------------------- latency


class LatencyTable(_Table):
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
        source: str = _ENTRIES,
        rows: Mapping[LatencyKey, int] | None = None,
    ) -> None:
        self.rows = dict(rows) if rows is not None else {k: n for n, k in enumerate(times, 1)}
        self.times = dict(sorted(times.items()))
        self.stdevs = {k: stdevs[k] for k in self.times}
        self.unit = unit
        self.meta = dict(meta or {})
        self.source = source
        self.lengths = _chain_lengths(self.times)
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
        for n, row in enumerate(_entry_rows(entries, 3), start=1):
            if len(row) not in (4, 5):
                raise TableError(f"{_where(_ENTRIES, n)}: expected (chain, st, end, time[, stdev])")
            key = _block(_ENTRIES, n, *row[:3])
            _store(_ENTRIES, n, times, key, _float(_ENTRIES, n, "time", row[3], nonneg=True))
            std = row[4] if len(row) == 5 else 0.0
            stdevs[key] = _float(_ENTRIES, n, "stdev", std, nonneg=True)
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
        for line, r in _read_csv(path, ("st", "end", "time", "stdev")):
            key = _block(src, line, r.get("chain", "0"), r["st"], r["end"])
            _store(src, line, times, key, _float(src, line, "time", r["time"], nonneg=True))
            stdevs[key] = _float(src, line, "stdev", r["stdev"], nonneg=True)
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
        atomic_write(path, _csv_text(header, rows))

    def optimal(self) -> OptimalLatencyTable:
        """T_opt by DP1 (spec §2.4), computed once per table."""
        if self._optimal is None:
            times: dict[LatencyKey, float] = {}
            stdevs: dict[LatencyKey, float] = {}
            breaks: dict[LatencyKey, tuple[int, ...]] = {}
            for c in self.lengths:
                blocks = {k[1:]: (v, self.stdevs[k]) for k, v in self.times.items() if k[0] == c}
                for (st, end), (t, s, b) in optimal_times(blocks).items():
                    times[c, st, end], stdevs[c, st, end], breaks[c, st, end] = t, s, b
            self._optimal = OptimalLatencyTable(
                times,
                stdevs,
                breaks,
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


class OptimalLatencyTable(_Table):
    """T_opt(chain, st, end) with its DP1 split points ``breaks`` (both ends included)."""

    kind = "optimal_latency"

    def __init__(
        self,
        times: Mapping[LatencyKey, float],
        stdevs: Mapping[LatencyKey, float],
        breaks: Mapping[LatencyKey, tuple[int, ...]],
        *,
        unit: str = "ms",
        meta: Mapping[str, Any] | None = None,
        source: str = _ENTRIES,
        rows: Mapping[LatencyKey, int] | None = None,
    ) -> None:
        self.rows = dict(rows) if rows is not None else {k: n for n, k in enumerate(times, 1)}
        self.times = dict(sorted(times.items()))
        self.stdevs = {k: stdevs[k] for k in self.times}
        self.breaks = {k: tuple(breaks[k]) for k in self.times}
        self.unit = unit
        self.meta = dict(meta or {})
        self.source = source
        self.lengths = _chain_lengths(self.times)

    @classmethod
    def read_csv(
        cls, path: PathLike, *, unit: str = "ms", meta: Mapping[str, Any] | None = None
    ) -> OptimalLatencyTable:
        """Read the paper's ``opt_time_*.csv`` (``id, st, end, time, stdev, breaks``)."""
        src = str(path)
        times: dict[LatencyKey, float] = {}
        stdevs: dict[LatencyKey, float] = {}
        breaks: dict[LatencyKey, tuple[int, ...]] = {}
        rows: dict[LatencyKey, int] = {}
        for line, r in _read_csv(path, ("st", "end", "time", "stdev", "breaks")):
            key = _block(src, line, r.get("chain", "0"), r["st"], r["end"])
            _store(src, line, times, key, _float(src, line, "time", r["time"], nonneg=True))
            stdevs[key] = _float(src, line, "stdev", r["stdev"], nonneg=True)
            breaks[key] = _breaks(src, line, key, r["breaks"])
            rows[key] = line
        if not times:
            raise TableError(f"{src}: line 2: no rows")
        return cls(times, stdevs, breaks, unit=unit, meta=meta, source=src, rows=rows)

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
                ",".join(map(str, self.breaks[k])),
            ]
            for n, k in enumerate(self.times)
        )
        atomic_write(path, _csv_text(header, rows))

    def _json_fields(self) -> dict[str, Any]:
        entries = [[*k, self.times[k], self.stdevs[k], list(self.breaks[k])] for k in self.times]
        return {"unit": self.unit, "entries": entries}

    @classmethod
    def read_json(cls, path: PathLike) -> OptimalLatencyTable:
        """Load a table saved by :meth:`write_json`, re-checking every entry."""
        doc = cls._load_json(path)
        src = str(path)
        times: dict[LatencyKey, float] = {}
        stdevs: dict[LatencyKey, float] = {}
        breaks: dict[LatencyKey, tuple[int, ...]] = {}
        for n, e in enumerate(doc.get("entries", []), start=1):
            if not isinstance(e, list) or len(e) != 6:
                raise TableError(
                    f"{src}: entry {n}: expected [chain, st, end, time, stdev, breaks]"
                )
            key = _block(src, n, *e[:3])
            _store(src, n, times, key, _float(src, n, "time", e[3], nonneg=True))
            stdevs[key] = _float(src, n, "stdev", e[4], nonneg=True)
            breaks[key] = _breaks(src, n, key, e[5])
        return cls(
            times, stdevs, breaks, unit=doc.get("unit", "ms"), meta=doc.get("meta"), source=src
        )


# ----------------------------------------------------------------------------- importance


class ImportanceTable(_Table):
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
        source: str = _ENTRIES,
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
        self.lengths = _chain_lengths(self.scores)
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
        for n, row in enumerate(_entry_rows(entries, 5), start=1):
            if len(row) != 6:
                raise TableError(
                    f"{_where(_ENTRIES, n)}: expected (chain, st, end, st_act, end_act, score)"
                )
            key = (*_block(_ENTRIES, n, *row[:3]), *_flags(_ENTRIES, n, row[3], row[4]))
            _store(_ENTRIES, n, scores, key, _float(_ENTRIES, n, score, row[5]))
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
        for line, r in _read_csv(path, ("st", "end", "st_act", "end_act", score)):
            blk = _block(src, line, r.get("chain", "0"), r["st"], r["end"])
            key = (*blk, *_flags(src, line, r["st_act"], r["end_act"]))
            _store(src, line, scores, key, _float(src, line, score, r[score]))
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
            breaks: dict[ImportanceKey, tuple[int, ...]] = {}
            for c in self.lengths:
                chain_h = {k[1:]: v for k, v in h.items() if k[0] == c}
                for key, (v, b) in extend_importance(chain_h).items():
                    values[(c, *key)], breaks[(c, *key)] = v, b
            meta = {**self.meta, "score": self.score, "norm": self.norm, "alpha": self.alpha}
            self._extended = ExtendedImportanceTable(
                values, breaks, meta=meta, source=self.source, rows=self.rows
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


class ExtendedImportanceTable(_Table):
    """I_ext(chain, st, end, st_act, end_act) with the DP3 split points (spec §3.5)."""

    kind = "extended_importance"

    def __init__(
        self,
        values: Mapping[ImportanceKey, float],
        breaks: Mapping[ImportanceKey, tuple[int, ...]],
        *,
        meta: Mapping[str, Any] | None = None,
        source: str = _ENTRIES,
        rows: Mapping[ImportanceKey, int] | None = None,
    ) -> None:
        self.values = dict(sorted(values.items(), key=_ext_order))
        self.breaks = {k: tuple(breaks[k]) for k in self.values}
        self.meta = dict(meta or {})
        self.source = source
        self.rows = dict(rows) if rows is not None else {k: n for n, k in enumerate(values, 1)}
        self.lengths = _chain_lengths(self.values)

    @classmethod
    def read_csv(
        cls, path: PathLike, *, meta: Mapping[str, Any] | None = None
    ) -> ExtendedImportanceTable:
        """Read the original ``ext_importance_*.csv`` (``id, st, end, st_act, end_act, imp,
        breaks``)."""
        src = str(path)
        values: dict[ImportanceKey, float] = {}
        breaks: dict[ImportanceKey, tuple[int, ...]] = {}
        rows: dict[ImportanceKey, int] = {}
        for line, r in _read_csv(path, ("st", "end", "st_act", "end_act", "imp", "breaks")):
            blk = _block(src, line, r.get("chain", "0"), r["st"], r["end"])
            key = (*blk, *_flags(src, line, r["st_act"], r["end_act"]))
            _store(src, line, values, key, _float(src, line, "imp", r["imp"]))
            breaks[key] = _breaks(src, line, blk, r["breaks"])
            rows[key] = line
        if not values:
            raise TableError(f"{src}: line 2: no rows")
        return cls(values, breaks, meta=meta, source=src, rows=rows)

    def write_csv(self, path: PathLike) -> None:
        """Write in the ``ext_importance_*.csv`` format."""
        multi = any(k[0] for k in self.values)
        header = [
            "id",
            *(["chain"] if multi else []),
            *("st", "end", "st_act", "end_act", "imp", "breaks"),
        ]
        rows = (
            [n, *(k if multi else k[1:]), v, ",".join(map(str, self.breaks[k]))]
            for n, (k, v) in enumerate(self.values.items())
        )
        atomic_write(path, _csv_text(header, rows))

    def _json_fields(self) -> dict[str, Any]:
        return {"entries": [[*k, v, list(self.breaks[k])] for k, v in self.values.items()]}

    @classmethod
    def read_json(cls, path: PathLike) -> ExtendedImportanceTable:
        """Load a table saved by :meth:`write_json`."""
        doc = cls._load_json(path)
        src = str(path)
        values: dict[ImportanceKey, float] = {}
        breaks: dict[ImportanceKey, tuple[int, ...]] = {}
        for n, e in enumerate(doc.get("entries", []), start=1):
            if not isinstance(e, list) or len(e) != 7:
                raise TableError(
                    f"{src}: entry {n}: expected [chain, st, end, sa, ea, imp, breaks]"
                )
            blk = _block(src, n, *e[:3])
            key = (*blk, *_flags(src, n, e[3], e[4]))
            _store(src, n, values, key, _float(src, n, "imp", e[5]))
            breaks[key] = _breaks(src, n, blk, e[6])
        return cls(values, breaks, meta=doc.get("meta"), source=src)


def _flags(source: str, row: int, st_act: Any, end_act: Any) -> tuple[int, int]:
    return _flag(source, row, "st_act", st_act), _flag(source, row, "end_act", end_act)


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
