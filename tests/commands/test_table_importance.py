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


def test_cli_executor_flags() -> None:
    from argparse import Namespace

    from depthfx.commands.table_importance import executor_options
    from depthfx.errors import DepthFXError

    def options(executor: str, **flags):
        names = ("workers", "address", "cpus_per_entry", "gpus_per_entry", "max_retries")
        return executor_options(Namespace(executor=executor, **{n: flags.get(n) for n in names}))

    assert options("ray", address="auto", gpus_per_entry=1.0, workers=4) == {
        "address": "auto", "num_gpus": 1.0, "local_cpus": 4,
    }  # fmt: skip
    assert options("processes", workers=2, cpus_per_entry=1, gpus_per_entry=1) == {
        "workers": 2, "threads": 1, "gpus": True,
    }  # fmt: skip
    assert options("serial") == {}
    with pytest.raises(DepthFXError, match="--workers: not an option of --executor serial"):
        options("serial", workers=2)
    with pytest.raises(DepthFXError, match="one worker per GPU"):
        options("processes", gpus_per_entry=2)


def test_cli_finetune_on_processes_equals_serial(tmp_path) -> None:
    import depthfx.cli

    model = trained_tiny(steps=5)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    (tmp_path / "m.py").write_text(
        "from importance_helpers import Tiny\n\ndef make():\n    return Tiny()\n"
    )
    x, y = digits()
    torch.save({"x": x[:128], "y": y[:128]}, tmp_path / "train.pt")
    torch.save({"x": x[1500:1600], "y": y[1500:1600]}, tmp_path / "val.pt")
    tables = {}
    for executor in ("serial", "processes"):
        out = tmp_path / f"{executor}.json"
        extra = ["--workers", "2", "--cpus-per-entry", "1"] if executor == "processes" else []
        argv = ["table", "importance", f"{tmp_path / 'm.py'}:make", "--weights",
                str(tmp_path / "w.pt"), "--method", "finetune", "--train-data",
                str(tmp_path / "train.pt"), "--data", str(tmp_path / "val.pt"), "--steps", "1",
                "--batch-size", "64", "--threads", "1", "--executor", executor, *extra,
                "--cache", str(tmp_path / executor), "-o", str(out)]  # fmt: skip
        assert depthfx.cli.main(argv) == 0
        tables[executor] = ImportanceTable.read_json(out)
    assert tables["processes"].scores == tables["serial"].scores
