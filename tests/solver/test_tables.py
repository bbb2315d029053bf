"""Tables: DP1 reproduces the shipped opt_time files, normalisation, CSV/JSON round trips and
every malformed-input case."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from depthfx import InfeasibleBudget, TableError
from depthfx.solver import (
    ExtendedImportanceTable,
    ImportanceTable,
    LatencyTable,
    OptimalLatencyTable,
    solve,
)

NETS = {
    "mbv2_1.0": "fish_gpu1_1228",
    "mbv2_1.4": "fish_gpu1_0103",
    "vgg19_no_trt": "fish_gpu1_0317",
}
IMP = "mbv2_1.0_synthetic_importance_raw.csv"
MBV2_BLOCK_ENDS = set(range(2, 51, 3))


def _paper(data_dir: Path, net: str, kind: str) -> Path:
    return data_dir / "paper_tables" / net / f"{kind}_{NETS[net]}.csv"


@pytest.mark.parametrize("net", sorted(NETS))
def test_dp1_reproduces_shipped_opt_time(data_dir: Path, net: str) -> None:
    ours = LatencyTable.read_csv(_paper(data_dir, net, "time")).optimal()
    shipped = OptimalLatencyTable.read_csv(_paper(data_dir, net, "opt_time"))
    assert list(ours.times) == list(shipped.times)
    assert len(ours.times) == {"vgg19_no_trt": 36}.get(net, 171)
    for key, t in shipped.times.items():
        assert ours.times[key] == pytest.approx(t, rel=1e-12, abs=0)
        assert ours.stdevs[key] == pytest.approx(shipped.stdevs[key], rel=1e-12, abs=0)
        assert ours.breaks[key] == shipped.breaks[key]
    # sanity: the recurrence really splits blocks (60 of 171 on MBV2-1.0, spec §2.4)
    raw = LatencyTable.read_csv(_paper(data_dir, net, "time"))
    split = sum(len(b) > 2 for b in ours.breaks.values())
    assert split == sum(ours.times[k] < raw.times[k] for k in raw.times)
    if net == "mbv2_1.0":
        assert split == 60
        assert ours.breaks[0, 48, 50] == (48, 49, 50)


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
    assert back.values == ext.values and back.breaks == ext.breaks
    # with exclude_zeros, DP3 can only split at block ends with end_act = 1 (spec §3.5)
    for (_, st, end, _, ea), brk in ext.breaks.items():
        assert all(p in MBV2_BLOCK_ENDS for p in brk[1:-1])
        assert len(brk) == 2 or ea == 1 or end - st > 1


def test_csv_round_trips(data_dir: Path, tmp_path: Path) -> None:
    lat = LatencyTable.read_csv(_paper(data_dir, "mbv2_1.0", "time"))
    lat.write_csv(tmp_path / "time.csv")
    again = LatencyTable.read_csv(tmp_path / "time.csv")
    assert again.times == lat.times and again.stdevs == lat.stdevs
    opt = lat.optimal()
    opt.write_csv(tmp_path / "opt.csv")
    text = (tmp_path / "opt.csv").read_text().splitlines()
    assert text[0] == "id,st,end,time,stdev,breaks"
    assert text[1].endswith(',"0,1"')
    back = OptimalLatencyTable.read_csv(tmp_path / "opt.csv")
    assert (back.times, back.stdevs, back.breaks) == (opt.times, opt.stdevs, opt.breaks)
    # the shipped opt_time file reads back the same way
    shipped = OptimalLatencyTable.read_csv(_paper(data_dir, "mbv2_1.0", "opt_time"))
    assert shipped.breaks == opt.breaks
    # multi-chain tables gain a chain column
    multi = LatencyTable.from_entries({(0, 0, 1): 1.0, (1, 0, 1): (2.0, 0.5)})
    multi.write_csv(tmp_path / "multi.csv")
    assert (tmp_path / "multi.csv").read_text().splitlines()[0] == "id,chain,st,end,time,stdev"
    assert LatencyTable.read_csv(tmp_path / "multi.csv").times == multi.times


def test_json_round_trips_with_meta(data_dir: Path, tmp_path: Path) -> None:
    meta = {"backend": "onnxruntime", "device": "cpu", "batch": 1, "fingerprint": "abc123"}
    lat = LatencyTable.read_csv(_paper(data_dir, "vgg19_no_trt", "time"), meta=meta)
    lat.write_json(tmp_path / "lat.json")
    back = LatencyTable.read_json(tmp_path / "lat.json")
    assert back.meta == meta and back.times == lat.times and back.stdevs == lat.stdevs
    opt = lat.optimal()
    opt.write_json(tmp_path / "opt.json")
    ob = OptimalLatencyTable.read_json(tmp_path / "opt.json")
    assert (ob.times, ob.breaks, ob.meta) == (opt.times, opt.breaks, meta)
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


# ----------------------------------------------------------------------------- bad input

GOOD_LAT = "id,st,end,time,stdev\n0,0,1,1.0,0.1\n1,0,2,1.5,0.1\n2,1,2,1.0,0.1\n"
GOOD_IMP = (
    ",id,st,end,st_act,end_act,train_loss,train_acc,val_loss,val_acc\n"
    "0,0,0,1,1,1,0,0,0,-1.0\n0,1,0,2,1,1,0,0,0,-2.0\n0,2,1,2,1,1,0,0,0,-1.5\n"
)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("id,st,time,stdev\n0,0,1.0,0.1\n", r"line 1: missing column\(s\) end"),
        ("id,st,end,time,stdev\n0,0,1,abc,0.1\n", r"line 2: time='abc' is not a number"),
        ("id,st,end,time,stdev\n0,0,1,1.0,0.1\n1,0,x,1,0\n", r"line 3: end='x' is not an int"),
        ("id,st,end,time,stdev\n0,0,1,nan,0.1\n", r"line 2: time is nan"),
        ("id,st,end,time,stdev\n0,0,1,-0.5,0.1\n", r"line 2: time=-0.5 is negative"),
        ("id,st,end,time,stdev\n0,0,1,1.0,-1\n", r"line 2: stdev=-1.0 is negative"),
        ("id,st,end,time,stdev\n0,0,1,1.0,0.1\n1,2,2,1.0,0.1\n", r"line 3: st=2 >= end=2"),
        ("id,st,end,time,stdev\n0,0,1,1.0,0.1\n\n1,0,1,2.0,0.1\n", r"line 4: duplicate row"),
        ("id,st,end,time,stdev\n0,0,1,1.0\n", r"line 2: 4 fields, header has 5"),
        ("id,st,end,time,stdev\n", r"no rows"),
        ("", r"line 1: empty file"),
    ],
)
def test_bad_latency_csv(tmp_path: Path, text: str, pattern: str) -> None:
    path = _write(tmp_path, "time.csv", text)
    with pytest.raises(TableError, match=pattern) as err:
        LatencyTable.read_csv(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("text", "score", "pattern"),
    [
        (GOOD_IMP, "val_acc5", r"line 1: missing column\(s\) val_acc5; header has: <unnamed>, id"),
        (GOOD_IMP + "0,3,0,1,1,1,0,0,0,-3\n", "val_acc", r"line 5: duplicate row"),
        (GOOD_IMP.replace("0,2,1,2,1,1", "0,2,1,2,2,1"), "val_acc", r"line 4: st_act=2 is not 0"),
        (GOOD_IMP.replace("-1.5", "inf"), "val_acc", r"line 4: val_acc is inf"),
        (GOOD_IMP.replace("-1.5", ""), "val_acc", r"line 4: val_acc='' is not a number"),
        (GOOD_IMP.replace("0,1,0,2,1,1", "0,1,3,2,1,1"), "val_acc", r"line 3: st=3 >= end=2"),
    ],
)
def test_bad_importance_csv(tmp_path: Path, text: str, score: str, pattern: str) -> None:
    path = _write(tmp_path, "imp.csv", text)
    with pytest.raises(TableError, match=pattern) as err:
        ImportanceTable.read_csv(path, score=score)
    assert str(path) in str(err.value)


def test_tables_must_match(tmp_path: Path) -> None:
    lat = LatencyTable.read_csv(_write(tmp_path, "time.csv", GOOD_LAT + "3,2,3,1.0,0.1\n"))
    imp = ImportanceTable.read_csv(_write(tmp_path, "imp.csv", GOOD_IMP))
    with pytest.raises(TableError, match=r"time\.csv: line 5: block .*st=2, end=3.* no importance"):
        solve(lat, imp, 10.0)
    extra = GOOD_IMP + "0,3,0,3,1,1,0,0,0,-1\n"
    lat = LatencyTable.read_csv(_write(tmp_path, "time.csv", GOOD_LAT))
    imp = ImportanceTable.read_csv(_write(tmp_path, "imp2.csv", extra))
    with pytest.raises(TableError, match=r"imp2\.csv: line 5: importance for block .*no latency"):
        solve(lat, imp, 10.0)


def test_infeasible_budget_names_minimum(data_dir: Path) -> None:
    lat = LatencyTable.read_csv(_paper(data_dir, "mbv2_1.0", "time"))
    imp = ImportanceTable.read_csv(data_dir / IMP, alpha=1.6)
    with pytest.raises(InfeasibleBudget) as err:
        solve(lat, imp, 5.0, prec=20)
    minimum = err.value.minimum
    assert repr(minimum) in str(err.value) and "5 ms" in str(err.value)
    # independent bound: the floor of any configuration is at least Σ_m-free cheapest path,
    # and with all activations removed the float optimum is 6.467 ms (spec §6.4)
    assert 5.0 < minimum <= 6.467
    sol = solve(lat, imp, minimum, prec=20)
    assert sol.time_units == int(minimum * 20) and sol.merge_check
    with pytest.raises(InfeasibleBudget):
        solve(lat, imp, math.nextafter(minimum, 0), prec=20)
    with pytest.raises(InfeasibleBudget):
        solve(lat, imp, minimum - 1e-9, prec=20)


def test_writers_leave_no_partial_file(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opt = LatencyTable.read_csv(_paper(data_dir, "vgg19_no_trt", "time")).optimal()
    target = tmp_path / "new_dir" / "opt.csv"

    def interrupted(src: str, dst: str) -> None:
        raise KeyboardInterrupt  # killed between writing the temp file and renaming it

    monkeypatch.setattr("depthfx.io.os.replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        opt.write_csv(target)
    assert list(target.parent.iterdir()) == []  # neither the target nor a temp file
    monkeypatch.undo()
    opt.write_csv(target)
    opt.write_json(tmp_path / "opt.json")
    assert sorted(p.name for p in target.parent.iterdir()) == ["opt.csv"]
    json.loads((tmp_path / "opt.json").read_text())
