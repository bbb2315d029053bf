"""``depthfx solve`` run in-process through the real dispatcher ``depthfx.cli.main``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import depthfx.cli
from depthfx.solver import ImportanceTable, LatencyTable, OptimalLatencyTable, solve

IMP = "mbv2_1.0_synthetic_importance_raw.csv"


@pytest.fixture(autouse=True)
def _only_solve(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register just this subcommand, so the test does not depend on the other ones."""
    monkeypatch.setattr(depthfx.cli, "COMMANDS", ("solve",))


def _args(data_dir: Path, *extra: str) -> list[str]:
    return [
        "solve",
        "--latency",
        str(data_dir / "paper_tables/mbv2_1.0/time_fish_gpu1_1228.csv"),
        "--importance",
        str(data_dir / IMP),
        "--prec",
        "20",
        "--score",
        "val_acc",
        "--norm",
        "single",
        "--alpha",
        "1.6",
        *extra,
    ]


def _expected(data_dir: Path, budget: float):
    lat = LatencyTable.read_csv(data_dir / "paper_tables/mbv2_1.0/time_fish_gpu1_1228.csv")
    imp = ImportanceTable.read_csv(data_dir / IMP, score="val_acc", norm="single", alpha=1.6)
    return solve(lat, imp, budget, 20)


def test_single_budget(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sol.json"
    opt = tmp_path / "opt_time.csv"
    ext = tmp_path / "ext.csv"
    argv = _args(data_dir, "--budget", "22.1", "--json", str(out))
    argv += ["--opt-time-out", str(opt), "--ext-out", str(ext)]
    assert depthfx.cli.main(argv) == 0
    sol = _expected(data_dir, 22.1)
    text = capsys.readouterr().out
    assert "budget 22.1 ms (prec 20: 442 units)" in text
    assert f"A ({len(sol.act_pos)} activations kept): {', '.join(map(str, sol.act_pos))}" in text
    assert (
        f"S ({len(sol.merge_pos)} merge boundaries): " + ", ".join(map(str, sol.merge_pos)) in text
    )
    assert f"objective: {sol.objective!r}" in text
    assert f"time: {sol.time!r} ms ({sol.time_units} units <= 442)" in text
    assert "merge-pattern check: ok" in text
    doc = json.loads(out.read_text())
    assert doc == {
        "act_pos": sol.act_pos,
        "merge_pos": sol.merge_pos,
        "objective": sol.objective,
        "time_units": sol.time_units,
        "time": sol.time,
        "budget": 22.1,
        "prec": 20.0,
        "merge_check": True,
    }
    shipped = OptimalLatencyTable.read_csv(
        data_dir / "paper_tables/mbv2_1.0/opt_time_fish_gpu1_1228.csv"
    )
    assert OptimalLatencyTable.read_csv(opt).splits == shipped.splits
    assert ext.read_text().startswith("id,st,end,st_act,end_act,imp,breaks\n")


def test_sweep(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sweep.json"
    argv = _args(data_dir, "--budget", "18", "--budget", "25", "--json", str(out))
    assert depthfx.cli.main(argv) == 0
    doc = json.loads(out.read_text())
    assert isinstance(doc, list) and [d["budget"] for d in doc] == [18.0, 25.0]
    for d, budget in zip(doc, (18, 25), strict=True):
        sol = _expected(data_dir, budget)
        assert (d["act_pos"], d["merge_pos"], d["objective"]) == (
            sol.act_pos,
            sol.merge_pos,
            sol.objective,
        )
        assert (d["time_units"], d["time"]) == (sol.time_units, sol.time)
    assert capsys.readouterr().out.count("merge-pattern check: ok") == 2


def _fails(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    assert depthfx.cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("depthfx: error: ")
    return err


def test_infeasible_budget(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sol.json"
    opt = tmp_path / "opt.csv"
    argv = _args(data_dir, "--budget", "25", "--budget", "5", "--json", str(out))
    err = _fails([*argv, "--opt-time-out", str(opt)], capsys)
    assert "budget 5 ms is infeasible" in err and "needs at least 6.3 ms" in err
    assert list(tmp_path.iterdir()) == []  # nothing written, not even the feasible budget


def test_bad_tables(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "time.csv"
    bad.write_text("id,st,end,time,stdev\n0,0,1,1.0,0.1\n1,0,2,NaN,0.1\n")
    out = tmp_path / "sol.json"
    argv = ["solve", "--latency", str(bad), "--importance", str(data_dir / IMP)]
    err = _fails([*argv, "--budget", "20", "--json", str(out)], capsys)
    assert f"{bad}: line 3: time is nan" in err
    argv = _args(data_dir, "--budget", "20", "--score", "top1", "--json", str(out))
    err = _fails(argv, capsys)
    assert "missing column(s) top1" in err and "val_acc" in err
    err = _fails(_args(data_dir, "--budget", "20", "--json", str(tmp_path / "no/x.json")), capsys)
    assert "directory does not exist" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["time.csv"]


def test_help_describes_formats(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        depthfx.cli.main(["solve", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for needle in ("time_*.csv: id, st, end, time, stdev", "st_act, end_act", "--budget"):
        assert needle in text


def test_budget_fastest(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--budget fastest solves for the fastest configuration; its time is a feasible budget."""
    out = tmp_path / "sol.json"
    assert depthfx.cli.main(_args(data_dir, "--budget", "fastest", "--json", str(out))) == 0
    printed = capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert printed.startswith(f"fastest: budget {doc['time']:g} ms")
    assert doc["budget"] == doc["time"]
    lat = LatencyTable.read_csv(data_dir / "paper_tables/mbv2_1.0/time_fish_gpu1_1228.csv")
    imp = ImportanceTable.read_csv(data_dir / IMP, score="val_acc", norm="single", alpha=1.6)
    assert solve(lat, imp, doc["time"], 20).time >= doc["time"]  # feasible; nothing is faster
