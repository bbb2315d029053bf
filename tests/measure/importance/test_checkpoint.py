"""The Fisher proxy's checkpoint: a run resumes bit for bit, and the file's name and keys stay
what older runs wrote (so their checkpoints still resume)."""

from __future__ import annotations

import json

import pytest
from importance_helpers import X1, digits, trained_tiny

from depthfx.measure.importance import measure_importance
from depthfx.measure.importance.checkpoint import ProxyCheckpoint
from depthfx.measure.importance.fisher import FisherScores
from depthfx.passes.analyze import analyze
from depthfx.solver import ImportanceTable

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_fisher_proxy_resumes_after_an_interruption_bit_for_bit(tmp_path, monkeypatch) -> None:
    """Interrupted in its third batch, the proxy keeps two batches' sums in the cache; the next
    run measures only the other two and ends with the uninterrupted scores exactly; a finished
    table is read back without running a batch; other settings start afresh."""
    model = trained_tiny()
    analysis = analyze(model, X1, training=False)
    x, y = digits()
    data = list(zip(x[1400:1528].split(32), y[1400:1528].split(32), strict=True))

    def run(**opts) -> ImportanceTable:
        return measure_importance(
            model, X1, data, analysis=analysis, score="kl", batch_size=32, progress=False, **opts
        )

    full = run()
    real_add = FisherScores.add_reference
    batches_run = []

    def counting(self, outputs) -> None:
        if stop_at is not None and len(batches_run) == stop_at:
            raise KeyboardInterrupt
        batches_run.append(1)
        real_add(self, outputs)

    monkeypatch.setattr(FisherScores, "add_reference", counting)
    stop_at = 2
    with pytest.raises(KeyboardInterrupt):
        run(cache=tmp_path)
    (saved,) = tmp_path.glob("proxy-*.json")
    assert json.loads(saved.read_text())["state"]["batches"] == 2

    stop_at = None
    batches_run.clear()
    resumed = run(cache=tmp_path)
    assert len(batches_run) == 2
    assert resumed.scores == full.scores  # floats saved exactly, the label draws continued

    batches_run.clear()
    assert run(cache=tmp_path).scores == full.scores
    assert batches_run == []

    run(cache=tmp_path, seed=1)
    assert len(batches_run) == 4
    assert len(list(tmp_path.glob("proxy-*.json"))) == 2


def test_checkpoint_file_name_and_keys_are_stable(tmp_path) -> None:
    """``proxy-<first 16 hex of the settings' SHA-256>.json`` holding ``settings`` and
    ``state``; the settings are the run's identity plus its data, batch size, seed, score and
    draws. Pinned: a change here orphans every saved checkpoint."""
    assert ProxyCheckpoint(tmp_path, {"seed": 0, "score": "kl"}).path.name == (
        "proxy-e2c540b81f477abd.json"
    )
    model = trained_tiny(steps=5)
    x = digits()[0]
    measure_importance(model, X1, [x[:16]], score="kl", cache=tmp_path / "c", progress=False)
    (saved,) = (tmp_path / "c").glob("proxy-*.json")
    content = json.loads(saved.read_text())
    assert set(content) == {"settings", "state"}
    assert set(content["settings"]) == {
        "model", "merges", "strided", "entries", "data", "batch_size", "seed", "score", "samples",
    }  # fmt: skip
    assert set(content["state"]) == {"batches", "fisher", "exact", "generator"}
    assert saved.name == ProxyCheckpoint(tmp_path / "c", content["settings"]).path.name
