"""``depthfx solve --method layermerge`` run in-process through the real dispatcher."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from layermerge_helpers import paths

import depthfx.cli
from depthfx.errors import InfeasibleBudget
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


def test_budget_fastest(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--budget fastest solves at the smallest feasible budget and writes the JSON that
    budget passed as a number writes."""
    out = tmp_path / "fastest.json"
    assert depthfx.cli.main([*_args(), "--budget", "fastest", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    table = LayerMergeTable.read_csv(LAT, IMP)
    # The minimum feasible time, by a shortest path over all tilings (not the DP).
    cheapest = {0: 0}
    for end in range(1, table.length + 1):
        costs = [cheapest[v.st] + int(v.time * 10) for v in table.by_end.get(end, [])]
        cheapest[end] = min(costs)
    assert doc["time_units"] == doc["budget_units"] == cheapest[table.length] > 0
    assert doc["time"] * 10 >= doc["time_units"]
    with pytest.raises(InfeasibleBudget):  # one ulp less is one unit less
        solve_layermerge(table, math.nextafter(doc["budget"], 0.0), 10)
    numeric = solve_layermerge(table, doc["budget"], 10)
    assert doc == json.loads(json.dumps(numeric.to_dict()))
    # Its time passed back is feasible (Σ int(10·t) ≤ int(10·Σ t)); the DP may then spend the
    # floors' slack on a more important tiling, as the original does.
    again = solve_layermerge(table, doc["time"], 10)
    assert again.time_units <= again.budget_units and again.objective >= doc["objective"]
    assert capsys.readouterr().out.startswith(f"fastest: budget {doc['budget']:g} ms (prec 10:")
    argv = [*_args(), "--budget", "fastest", "--budget", "20", "--json", str(out)]
    assert depthfx.cli.main(argv) == 0
    assert [d["budget"] for d in json.loads(out.read_text())] == [doc["budget"], 20]


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
