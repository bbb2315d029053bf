"""Importance tables: normalisation, the extended table's format and CSV/JSON round trips."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
from solver_helpers import IMP, MBV2_BLOCK_ENDS

from depthfx import TableError
from depthfx.solver import ExtendedImportanceTable, ImportanceTable, LatencyTable


def _raw_rows(data_dir: Path) -> list[dict[str, str]]:
    with (data_dir / IMP).open() as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("norm", ["single", "all", "none", "default"])
def test_normalisation(data_dir: Path, norm: str) -> None:
    default = set(range(1, 51)) - MBV2_BLOCK_ENDS
    imp = ImportanceTable.read_csv(
        data_dir / IMP, score="val_acc", norm=norm, alpha=1.6, default_acts=default
    )
    rows = _raw_rows(data_dir)
    assert len(rows) == 315
    raw = {
        (0, int(r["st"]), int(r["end"]), int(r["st_act"]), int(r["end_act"])): float(r["val_acc"])
        for r in rows
    }

    def selected(k: tuple[int, ...]) -> bool:
        single = k[2] - k[1] == 1
        if norm == "single":
            return single
        if norm in ("all", "none"):
            return True
        match = (k[3] == 1) == (k[1] in default) and (k[4] == 1) == (k[2] in default)
        return (single and match) or k[1:3] == (0, 1)

    mask = [v for k, v in raw.items() if selected(k)]
    assert len(mask) == {"single": 83, "all": 315, "none": 315, "default": 50}[norm]
    shift = 0.0 if norm == "none" else 1.6 * math.fsum(mask) / len(mask)
    h = imp.normalised()
    for k, v in raw.items():
        assert h[k] == pytest.approx(v - shift, abs=1e-12)


def test_default_norm_checks_pattern(data_dir: Path) -> None:
    imp = ImportanceTable.read_csv(data_dir / IMP, norm="default", default_acts={1, 2, 3})
    with pytest.raises(TableError, match="expected one per position"):
        imp.normalised()
    with pytest.raises(TableError, match="needs default_acts"):
        ImportanceTable.read_csv(data_dir / IMP, norm="default")


def test_extended_table_format_and_round_trip(data_dir: Path, tmp_path: Path) -> None:
    ext = ImportanceTable.read_csv(data_dir / IMP, score="val_acc", alpha=1.6).extended()
    out = tmp_path / "ext_importance_s_val_acc_n_single_a_1.6.csv"
    ext.write_csv(out)
    with out.open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "st", "end", "st_act", "end_act", "imp", "breaks"]
    assert len(rows) == 316
    assert [int(r[0]) for r in rows[1:]] == list(range(315))
    # spec §3.5 order: lexicographic (st, end), flags 1 before 0
    keys = [tuple(int(x) for x in r[1:5]) for r in rows[1:]]
    assert keys == sorted(keys, key=lambda k: (k[0], k[1], -k[2], -k[3]))
    back = ExtendedImportanceTable.read_csv(out)
    assert back.values == ext.values and back.splits == ext.splits
    # with exclude_zeros, DP3 can only split at block ends with end_act = 1 (spec §3.5)
    for (_, st, end, _, ea), brk in ext.splits.items():
        assert all(p in MBV2_BLOCK_ENDS for p in brk[1:-1])
        assert len(brk) == 2 or ea == 1 or end - st > 1


def test_json_round_trips_with_meta(data_dir: Path, tmp_path: Path) -> None:
    imp = ImportanceTable.read_csv(data_dir / IMP, alpha=1.6, meta={"method": "proxy"})
    imp.write_json(tmp_path / "imp.json")
    ib = ImportanceTable.read_json(tmp_path / "imp.json")
    assert ib.scores == imp.scores and ib.meta == {"method": "proxy"}
    assert (ib.score, ib.norm, ib.alpha) == ("val_acc", "single", 1.6)
    assert ib.extended().values == imp.extended().values
    ext = imp.extended()
    ext.write_json(tmp_path / "ext.json")
    eb = ExtendedImportanceTable.read_json(tmp_path / "ext.json")
    assert eb.values == ext.values and eb.meta["alpha"] == 1.6
    with pytest.raises(TableError, match="expected a 'latency' table"):
        LatencyTable.read_json(tmp_path / "imp.json")
