"""Reading, writing and validating the solver's table files: the original code's CSV formats and
a JSON form that carries a ``meta`` dict (fingerprint of the measurement setting).

Every table is keyed by chain: latency by (chain, st, end), importance by
(chain, st, end, st_act, end_act). The paper's CSV files describe one chain; they are chain 0,
and an optional ``chain`` column (written only when a table has a chain other than 0) extends
the formats to several chains.

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
from typing import Any

import numpy as np

from depthfx.errors import TableError
from depthfx.io import atomic_write

PathLike = str | os.PathLike[str]

#: ``source`` of a table built in memory (``from_entries``): errors name entries, not lines.
ENTRIES = "<entries>"
_JSON_VERSION = 1


def csv_text(header: list[str], rows: Iterable[list[Any]]) -> str:
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


def read_csv_rows(path: PathLike, required: Iterable[str]) -> Iterator[tuple[int, dict[str, str]]]:
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


def location(source: str, row: int) -> str:
    """Where a row is, for error messages: ``file: line N`` or ``<entries>: entry N``."""
    return f"{source}: {'entry' if source == ENTRIES else 'line'} {row}"


def int_field(where: str, name: str, text: Any) -> int:
    """An integer field at ``where``; integral floats (``"3.0"``) pass, bools do not."""
    try:
        value = float(text) if isinstance(text, str) else text
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise ValueError
        return int(value)
    except (TypeError, ValueError):
        raise TableError(f"{where}: {name}={text!r} is not an integer") from None


def parse_int(source: str, row: int, name: str, text: Any) -> int:
    """An integer field of row ``row`` of ``source``."""
    return int_field(location(source, row), name, text)


def float_field(where: str, name: str, text: Any, *, nonneg: bool = False) -> float:
    """A finite float field at ``where`` (``nonneg``: and not negative)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise TableError(f"{where}: {name}={text!r} is not a number") from None
    if not math.isfinite(value):
        raise TableError(f"{where}: {name} is {value}, expected a finite number")
    if nonneg and value < 0:
        raise TableError(f"{where}: {name}={value!r} is negative")
    return value


def parse_float(source: str, row: int, name: str, text: Any, *, nonneg: bool = False) -> float:
    """A finite float field of row ``row`` of ``source`` (``nonneg``: and not negative)."""
    return float_field(location(source, row), name, text, nonneg=nonneg)


def parse_block(source: str, row: int, chain: Any, st: Any, end: Any) -> tuple[int, int, int]:
    """The (chain, st, end) key of a row, with 0 <= st < end."""
    c, s, e = (
        parse_int(source, row, n, v) for n, v in (("chain", chain), ("st", st), ("end", end))
    )
    if c < 0 or s < 0:
        raise TableError(f"{location(source, row)}: chain and st must be >= 0 (got {c}, {s})")
    if s >= e:
        raise TableError(f"{location(source, row)}: st={s} >= end={e}; a block needs st < end")
    return c, s, e


def parse_flag(source: str, row: int, name: str, text: Any) -> int:
    """An activation flag: 0 or 1."""
    value = parse_int(source, row, name, text)
    if value not in (0, 1):
        raise TableError(f"{location(source, row)}: {name}={value} is not 0 or 1")
    return value


def parse_splits(source: str, row: int, key: tuple[int, int, int], text: Any) -> tuple[int, ...]:
    """DP1/DP3 split points (the ``breaks`` column): increasing from st to end of ``key``."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out = tuple(parse_int(source, row, "breaks", x) for x in items)
    if len(out) < 2 or out[0] != key[1] or out[-1] != key[2] or list(out) != sorted(set(out)):
        raise TableError(
            f"{location(source, row)}: breaks {text!r} must increase from st={key[1]} "
            f"to end={key[2]}"
        )
    return out


def store_row(source: str, row: int, table: dict[Any, Any], key: Any, value: Any) -> None:
    """``table[key] = value``; a second row for the same key is an error."""
    if key in table:
        raise TableError(f"{location(source, row)}: duplicate row for {_keyname(key)}")
    table[key] = value


def _keyname(key: tuple[int, ...]) -> str:
    names = ("chain", "st", "end", "st_act", "end_act")
    return "(" + ", ".join(f"{n}={v}" for n, v in zip(names, key, strict=False)) + ")"


def entry_rows(entries: Mapping[Any, Any] | Iterable[Any], key_len: int) -> Iterator[list[Any]]:
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


def chain_lengths(keys: Iterable[tuple[int, ...]]) -> dict[int, int]:
    """``{chain: largest end}`` over (chain, st, end, ...) keys, in chain order."""
    lengths: dict[int, int] = {}
    for key in keys:
        lengths[key[0]] = max(lengths.get(key[0], 0), key[2])
    return dict(sorted(lengths.items()))


def parse_flags(source: str, row: int, st_act: Any, end_act: Any) -> tuple[int, int]:
    """The (st_act, end_act) flags of an importance row."""
    return parse_flag(source, row, "st_act", st_act), parse_flag(source, row, "end_act", end_act)


class JsonTable:
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
