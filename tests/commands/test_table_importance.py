"""``depthfx table importance``: a table from a model file, weights and a data file."""

from __future__ import annotations

import pytest
import torch
from importance_helpers import X1, digits, trained_tiny

from depthfx.measure.importance import entries_of
from depthfx.passes.analyze import analyze
from depthfx.solver import ImportanceTable

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_cli(tmp_path, monkeypatch, capsys) -> None:
    import depthfx.cli
    import depthfx.commands.table

    monkeypatch.setattr(depthfx.commands.table, "KINDS", ("importance",))
    monkeypatch.setattr(depthfx.cli, "COMMANDS", ("table",))
    model = trained_tiny(steps=5)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    (tmp_path / "m.py").write_text(
        "from importance_helpers import Tiny\n\ndef make():\n    return Tiny()\n"
    )
    x, y = digits()
    torch.save({"x": x[:40], "y": y[:40]}, tmp_path / "data.pt")
    out = tmp_path / "imp.json"
    argv = ["table", "importance", f"{tmp_path / 'm.py'}:make", "--weights", str(tmp_path / "w.pt"),
            "--data", str(tmp_path / "data.pt"), "--estimate", "exact", "-o", str(out),
            "--ext-csv", str(tmp_path / "ext.csv")]  # fmt: skip
    assert depthfx.cli.main(argv) == 0
    table = ImportanceTable.read_json(out)
    assert table.score == "val_acc" and table.meta["fingerprint"]["images"] == 40
    assert len(table.scores) == len(entries_of(analyze(model, X1, training=False)))
    assert "entries" in capsys.readouterr().out
    bad = [
        "table",
        "importance",
        f"{tmp_path / 'm.py'}:make",
        "--data",
        "nope-data",
        "-o",
        str(out),
    ]
    assert depthfx.cli.main(bad) == 2
    assert "unknown dataset" in capsys.readouterr().err
