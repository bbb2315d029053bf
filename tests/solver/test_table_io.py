"""Table files (table_io): every malformed-input case names the file, the row and the problem,
and writers never leave a partial file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from solver_helpers import GOOD_IMP, paper_table, write_file

from depthfx import TableError
from depthfx.solver import ImportanceTable, LatencyTable


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
    path = write_file(tmp_path, "time.csv", text)
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
    path = write_file(tmp_path, "imp.csv", text)
    with pytest.raises(TableError, match=pattern) as err:
        ImportanceTable.read_csv(path, score=score)
    assert str(path) in str(err.value)


def test_writers_leave_no_partial_file(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opt = LatencyTable.read_csv(paper_table(data_dir, "vgg19_no_trt", "time")).optimal()
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
