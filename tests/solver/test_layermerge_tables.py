"""LayerMerge tables: the bundled files read as the spec describes them (§2, §3), the join by key
(pitfall 8), round trips, and one clear TableError per malformed input."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import pytest
from layermerge_helpers import DATA, INSTANCES, load, paths, structure

from depthfx import TableError
from depthfx.blocks import valid_blocks
from depthfx.solver import (
    LayerMergeImportanceTable,
    LayerMergeLatencyTable,
    LayerMergeTable,
    Variant,
    solve_layermerge,
)

COUNTS = {"toy12": 59, "toy12_ties": 59, "mbv2_1.0_synth": 391, "resnet34_synth": 150}
BLOCKS = {"toy12": 29, "toy12_ties": 29, "mbv2_1.0_synth": 171, "resnet34_synth": 62}


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("name", INSTANCES)
def test_bundled_tables(name: str) -> None:
    """Row counts, file order, valid blocks and the meaning of each row's kept subset."""
    table, st = load(name), structure(name)
    lat_path, imp_path = paths(name)
    assert len(table.variants) == COUNTS[name] == st["num_entries"]
    assert len(table.blocks) == BLOCKS[name] and table.length == st["act_num"]
    assert table.blocks == [tuple(b) for b in st["valid_blocks"]]
    residuals = [(int(s), t) for s, t in st["skip_s2t"].items()]
    assert table.blocks == valid_blocks(st["act_num"], st["str_pos"], residuals)
    rows = _csv_rows(lat_path)
    assert [(v.st, v.end, v.ker, v.stride, str(v.is_dw)) for v in table.variants] == [
        (int(r["st"]), int(r["end"]), int(r["ker"]), int(r["str"]), r["is_dw"]) for r in rows
    ]
    assert [v.time for v in table.variants] == [float(r["time"]) for r in rows]
    imp = {(r["st"], r["end"], r["ker"], r["is_dw"]): r for r in _csv_rows(imp_path)}
    convs = {c["index"]: c for c in st["convs"]}
    for v in table.variants:
        r = imp[str(v.st), str(v.end), str(v.ker), str(v.is_dw)]
        assert (v.importance, v.conv_comb) == (float(r["importance"]), r["conv_comb"])
        inside = [convs[p] for p in range(v.st + 1, v.end + 1)]
        kept = [convs[p] for p in v.kept]
        assert v.kept and set(v.kept) <= set(range(v.st + 1, v.end + 1))
        assert v.ker == sum(c["kernel_size"] - 1 for c in kept) + 1  # spec §1.3
        assert v.is_dw == all(c["groups"] == c["out_channels"] for c in kept)
        assert v.stride == max(c["stride"] for c in inside)
        for c in inside:  # irreducible convs are always kept (spec §1.2)
            if c["in_channels"] != c["out_channels"] or c["stride"] > 1:
                assert c["index"] in v.kept
    assert {v.childkey for v in table.by_end[1]} <= {
        f"ker{v.ker}_str{v.stride}_is_dw_{v.is_dw}" for v in table.variants
    }


@pytest.mark.parametrize("name", INSTANCES)
def test_normalisation_from_raw_importance(name: str) -> None:
    raw = LayerMergeImportanceTable.from_raw_csv(DATA / name / "importance.csv")
    shipped = LayerMergeImportanceTable.read_csv(paths(name)[1])
    assert [r[:2] for r in raw.rows] == [r[:2] for r in shipped.rows]
    for (_, _, a), (_, _, b) in zip(raw.rows, shipped.rows, strict=True):
        assert a == pytest.approx(b, rel=1e-15, abs=0)


def test_join_is_by_key_not_by_position(tmp_path: Path) -> None:
    """Reordering the importance file changes nothing; positional pairing would."""
    lat_path, imp_path = paths("mbv2_1.0_synth")
    lines = imp_path.read_text().splitlines(keepends=True)
    shuffled = tmp_path / "imp.csv"
    shuffled.write_text(lines[0] + "".join(reversed(lines[1:])))
    a = LayerMergeTable.read_csv(lat_path, imp_path)
    b = LayerMergeTable.read_csv(lat_path, shuffled)
    assert a.variants == b.variants
    imp_rows = _csv_rows(shuffled)
    by_position = [float(r["importance"]) for r in imp_rows]
    assert by_position != [v.importance for v in a.variants]  # the original's zip would mis-pair
    sol_a, sol_b = solve_layermerge(a, 13.4), solve_layermerge(b, 13.4)
    assert (sol_a.blocks, sol_a.objective) == (sol_b.blocks, sol_b.objective)


@pytest.mark.parametrize("name", INSTANCES)
def test_csv_round_trip(name: str, tmp_path: Path) -> None:
    table = load(name)
    lat, imp = tmp_path / "time.csv", tmp_path / "imp.csv"
    table.latency().write_csv(lat)
    table.importance().write_csv(imp)
    assert lat.read_text().splitlines()[0] == "id,st,end,ker,str,is_dw,time,stdev"
    assert imp.read_text().splitlines()[0] == ",id,st,end,ker,str,is_dw,conv_comb,importance"
    assert LayerMergeTable.read_csv(lat, imp).variants == table.variants
    table.latency(with_kept=True).write_csv(lat)  # the conv_comb extension column
    again = LayerMergeTable.read_csv(lat, imp)
    assert again.variants == table.variants
    assert LayerMergeLatencyTable.read_csv(lat).has_kept


def test_variants_keyed_by_kept_subset(tmp_path: Path) -> None:
    """With conv_comb in the latency file, one block may carry two kept subsets of one shape
    (spec pitfall 4); the DP then sees both."""
    shape = (0, 2, 3, 1, False)
    lat = LayerMergeLatencyTable([(shape, (1,), 0.4, 0.0), (shape, (2,), 0.3, 0.0)])
    imp = LayerMergeImportanceTable([(shape, (2,), 0.9), (shape, (1,), 0.95)])
    table = LayerMergeTable.join(lat, imp)
    assert [(v.kept, v.time, v.importance) for v in table.variants] == [
        ((1,), 0.4, 0.95),
        ((2,), 0.3, 0.9),
    ]
    assert solve_layermerge(table, 1.0).conv_ind == [1]
    assert solve_layermerge(table, 0.35).conv_ind == [2]
    with pytest.raises(TableError, match=r"<entries>: entry 2: duplicate row .*conv_comb=\(2,\)"):
        LayerMergeImportanceTable([(shape, (2,), 0.9), (shape, "(2,)", 0.95)])
    with pytest.raises(TableError, match=r"entry 2: block \(st=0, end=2\) has two variants"):
        LayerMergeTable(
            [
                Variant(0, 2, 3, 1, False, (2,), 0.3, 0.0, 0.9),
                Variant(0, 2, 3, 1, True, (2,), 0.3, 0.0, 0.9),
            ]
        )


# ----------------------------------------------------------------------------- bad inputs

LAT = "id,st,end,ker,str,is_dw,time,stdev\n0,0,1,3,1,False,0.5,0.01\n1,0,2,3,1,False,0.7,0.01\n"
IMP = (
    ",id,st,end,ker,str,is_dw,conv_comb,importance\n"
    '0,0,0,1,3,1,False,"(1,)",0.99\n'
    '1,1,0,2,3,1,False,"(2,)",0.98\n'
)


def _files(tmp_path: Path, lat: str = LAT, imp: str = IMP) -> tuple[Path, Path]:
    a, b = tmp_path / "time.csv", tmp_path / "imp.csv"
    a.write_text(lat)
    b.write_text(imp)
    return a, b


def _error(tmp_path: Path, lat: str = LAT, imp: str = IMP) -> str:
    with pytest.raises(TableError) as err:
        LayerMergeTable.read_csv(*_files(tmp_path, lat, imp))
    message = str(err.value)
    assert message.count("\n") == 0
    return message


def test_good_files_read(tmp_path: Path) -> None:
    table = LayerMergeTable.read_csv(*_files(tmp_path))
    assert [v.kept for v in table.variants] == [(1,), (2,)]


KEY2 = "(st=0, end=2, ker=3, str=1, is_dw=False"
BAD = {
    # a key missing on either side
    "missing-importance": (
        LAT,
        IMP.rsplit("1,1,", 1)[0],
        "time.csv: line 3",
        f"variant {KEY2}) has no importance row in",
    ),
    "missing-latency": (
        LAT.rsplit("1,0,", 1)[0],
        IMP,
        "imp.csv: line 3",
        f"variant {KEY2}, conv_comb=(2,)) has no latency row in",
    ),
    # duplicate keys
    "duplicate-latency": (
        LAT + "2,0,2,3,1,False,0.8,0.01\n",
        IMP,
        "time.csv: line 4",
        f"duplicate row for variant {KEY2}) (first at line 3)",
    ),
    "duplicate-importance": (
        LAT,
        IMP + '2,2,0,2,3,1,False,"(2,)",0.5\n',
        "imp.csv: line 4",
        f"duplicate row for variant {KEY2}, conv_comb=(2,)) (first at line 3)",
    ),
    "duplicate-importance-shape": (
        LAT,
        IMP + '2,2,0,2,3,1,False,"(1, 2)",0.5\n',
        "imp.csv: line 4",
        f"duplicate row for variant {KEY2}) (first at line 3)",
    ),
    # bad numbers
    "nan-time": (LAT.replace("0.7,", "NaN,"), IMP, "time.csv: line 3", f"{KEY2}): time is nan"),
    "inf-time": (LAT.replace("0.7,", "inf,"), IMP, "time.csv: line 3", f"{KEY2}): time is inf"),
    "negative-time": (
        LAT.replace("0.7,", "-0.7,"),
        IMP,
        "time.csv: line 3",
        f"{KEY2}): time=-0.7 is negative",
    ),
    "nan-stdev": (LAT.replace("0.01\n1", "nan\n1"), IMP, "time.csv: line 2", "stdev is nan"),
    "text-time": (LAT.replace("0.7,", "x,"), IMP, "time.csv: line 3", "time='x' is not a number"),
    "nan-importance": (
        LAT,
        IMP.replace("0.98", "nan"),
        "imp.csv: line 3",
        f"{KEY2}, conv_comb=(2,)): importance is nan",
    ),
    # bad keys
    "empty-block": (
        LAT.replace("1,0,2,3,1,False", "1,2,2,3,1,False"),
        IMP,
        "time.csv: line 3",
        "block (st=2, end=2) needs 0 <= st < end",
    ),
    "bad-is-dw": (
        LAT.replace("1,0,2,3,1,False", "1,0,2,3,1,maybe"),
        IMP,
        "time.csv: line 3",
        "is_dw='maybe' is not True or False",
    ),
    "bad-ker": (
        LAT.replace("1,0,2,3,1,", "1,0,2,3.5,1,"),
        IMP,
        "time.csv: line 3",
        "ker='3.5' is not an integer",
    ),
    "kept-outside": (
        LAT,
        IMP.replace('"(2,)"', '"(3,)"'),
        "imp.csv: line 3",
        "conv_comb=(3,) must increase and lie in 1..2",
    ),
    "kept-unsorted": (LAT, IMP.replace('"(2,)"', '"(2, 1)"'), "imp.csv: line 3", "must increase"),
    "kept-int": (LAT, IMP.replace('"(2,)"', "2"), "imp.csv: line 3", "conv_comb=2 is not a tuple"),
    "kept-text": (LAT, IMP.replace('"(2,)"', "(2"), "imp.csv: line 3", "conv_comb='(2' is not"),
    # structure
    "no-stdev": (LAT.replace(",stdev", ",sd"), IMP, "time.csv: line 1", "missing column(s) stdev"),
    "no-importance": (
        LAT,
        IMP.replace("importance", "imp"),
        "imp.csv: line 1",
        "missing column(s) importance",
    ),
    "short-row": (LAT + "2,1,2\n", IMP, "time.csv: line 4", "3 fields, header has 8"),
    "empty": ("", IMP, "time.csv: line 1", "empty file"),
    "no-rows": (LAT.split("\n")[0] + "\n", IMP, "time.csv: line 2", "no rows"),
}


@pytest.mark.parametrize(("lat", "imp", "where", "needle"), BAD.values(), ids=BAD.keys())
def test_bad_tables(tmp_path: Path, lat: str, imp: str, where: str, needle: str) -> None:
    message = _error(tmp_path, lat, imp)
    assert message.startswith(str(tmp_path / where.split(":")[0]) + ":"), message
    assert where.split(": ")[1] + ":" in message, message
    assert needle in message, message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TableError, match=re.escape(f"{tmp_path / 'none.csv'}: cannot open")):
        LayerMergeTable.read_csv(tmp_path / "none.csv", tmp_path / "none.csv")


def test_writers_are_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = LayerMergeTable.read_csv(*_files(tmp_path))
    out = tmp_path / "out" / "time.csv"
    table.latency().write_csv(out)
    before = out.read_text()

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        LayerMergeTable([Variant(0, 1, 1, 1, False, (1,), 9.0, 0.0, 1.0)]).latency().write_csv(out)
    assert out.read_text() == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["time.csv"]
    assert not math.isnan(table.variants[0].time)
