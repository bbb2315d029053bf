"""``depthfx solve --method layermerge`` run in-process through the real dispatcher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from layermerge_helpers import paths

import depthfx.cli
from depthfx.solver import LayerMergeTable, solve_layermerge

LAT, IMP = paths("mbv2_1.0_synth")


@pytest.fixture(autouse=True)
def _only_solve(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(depthfx.cli, "COMMANDS", ("solve",))


def _args() -> list[str]:
    return ["solve", "--method", "layermerge", "--latency", str(LAT), "--importance", str(IMP)]


def test_single_budget(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out.json"
    assert depthfx.cli.main([*_args(), "--budget", "13.4", "--json", str(out)]) == 0
    sol = solve_layermerge(LayerMergeTable.read_csv(LAT, IMP), 13.4, 10)
    doc = json.loads(out.read_text())
    assert doc == json.loads(json.dumps(sol.to_dict()))
    assert doc["method"] == "layermerge" and doc["prec"] == 10 and doc["budget_units"] == 134
    assert doc["act_ind"] == sol.act_ind and doc["conv_ind"] == sol.conv_ind
    assert doc["children"]["5"] == {
        "variant": sol.children[5].variant,
        "kept": list(sol.children[5].kept),
    }
    text = capsys.readouterr().out
    assert "budget 13.4 ms (prec 10: 134 units)" in text
    assert f"A ({len(sol.act_ind)} block ends, activations kept): " in text
    assert f"pruned ({len(sol.pruned)} convs): {', '.join(map(str, sol.pruned))}" in text
    assert f"objective: {sol.objective!r}" in text
    assert f"time: {sol.time!r} ms ({sol.time_units} units <= 134)" in text


def test_sweep_and_prec(tmp_path: Path) -> None:
    out = tmp_path / "sweep.json"
    argv = [*_args(), "--budget", "22.3", "--budget", "15.6", "--prec", "20", "--json", str(out)]
    assert depthfx.cli.main(argv) == 0
    doc = json.loads(out.read_text())
    table = LayerMergeTable.read_csv(LAT, IMP)
    assert [d["budget"] for d in doc] == [22.3, 15.6]
    for d in doc:
        sol = solve_layermerge(table, d["budget"], 20)
        assert (d["act_ind"], d["conv_ind"], d["objective"]) == (
            sol.act_ind,
            sol.conv_ind,
            sol.objective,
        )
        assert d["budget_units"] == int(d["budget"] * 20)


def _fails(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    assert depthfx.cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("depthfx: error: ")
    return err


def test_errors_write_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out.json"
    err = _fails([*_args(), "--budget", "20", "--budget", "1", "--json", str(out)], capsys)
    assert "budget 1 ms is infeasible" in err and "needs at least" in err
    bad = tmp_path / "time.csv"
    bad.write_text(LAT.read_text().replace("2.3532", "nan", 1))
    argv = ["solve", "--method", "layermerge", "--latency", str(bad), "--importance", str(IMP)]
    err = _fails([*argv, "--budget", "20", "--json", str(out)], capsys)
    assert f"{bad}: line 2: variant (st=0, end=1, ker=3, str=1, is_dw=True): time is nan" in err
    err = _fails([*_args(), "--budget", "20", "--json", str(tmp_path / "no" / "x.json")], capsys)
    assert "directory does not exist" in err
    err = _fails([*_args(), "--budget", "20", "--alpha", "1.6", "--ext-out", "x.csv"], capsys)
    assert "--alpha, --ext-out: only used by --method icml23" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["time.csv"]


def test_help_mentions_layermerge(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        depthfx.cli.main(["solve", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for needle in ("--method", "id, st, end, ker, str, is_dw, time, stdev", "conv_comb"):
        assert needle in text
