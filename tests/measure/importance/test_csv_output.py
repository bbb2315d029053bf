"""Table files: the paper's raw importance.csv out and in, JSON out and in, the I_ext CSV."""

from __future__ import annotations

import pytest
from importance_helpers import tiny_tables

from depthfx.measure.importance import write_raw_csv
from depthfx.solver import ImportanceTable

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_round_trips(tmp_path) -> None:
    _, _, table = tiny_tables()
    # paper CSV out and in; JSON out and in; I_ext CSV
    write_raw_csv(table, tmp_path / "importance.csv")
    back = ImportanceTable.read_csv(tmp_path / "importance.csv", score="neg_kl", norm="none")
    assert back.scores == table.scores
    assert (tmp_path / "importance.csv").read_text().startswith(",id,chain,st,end,st_act,")
    table.write_json(tmp_path / "imp.json")
    again = ImportanceTable.read_json(tmp_path / "imp.json")
    assert again.scores == table.scores and again.norm == "none"
    table.extended().write_csv(tmp_path / "ext.csv")
    assert len((tmp_path / "ext.csv").read_text().splitlines()) == len(table.scores) + 1
