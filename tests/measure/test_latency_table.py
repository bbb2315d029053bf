"""LatencyTable.measure on ONNX Runtime CPU: entries, cache resume, fingerprints, batch."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from latency_helpers import FAST
from torch import nn

from depthfx.errors import FingerprintMismatch, TableError
from depthfx.measure import latency_table
from depthfx.measure.cache import TimingCache
from depthfx.measure.latency_table import load_table, measure_latency_table
from depthfx.measure.setting import check_table
from depthfx.passes.analyze import analyze
from depthfx.solver import LatencyTable


def test_one_entry_per_valid_block(net: nn.Module, x: torch.Tensor, table: LatencyTable) -> None:
    chains = analyze(net, (x,)).chains
    expected = {(c.index, i, j) for c in chains for i, j in c.valid_blocks()}
    assert set(table.times) == expected
    assert len(expected) == 15
    for key, t in table.times.items():
        assert math.isfinite(t) and t > 0, key
        assert math.isfinite(table.stdevs[key]) and table.stdevs[key] >= 0
    meta = table.meta
    assert meta["fingerprint"]["backend"] == "onnxruntime"
    assert meta["fingerprint"]["threads"] == 1 and meta["fingerprint"]["batch"] == 1
    assert meta["end_to_end_ms"] > 0 and math.isfinite(meta["fixed_ms"])


def test_cache_resume_remeasures_nothing_stored(
    net: nn.Module, x: torch.Tensor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = latency_table._time
    calls: list[int] = []

    def counting(*args, **kwargs):
        if len(calls) == limit:
            raise KeyboardInterrupt  # simulate Ctrl-C in the middle of the build
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(latency_table, "_time", counting)
    opts = {"protocol": FAST, "cache_dir": tmp_path, "bound": False, "end_to_end": False}
    limit = 6
    with pytest.raises(KeyboardInterrupt):
        measure_latency_table(net, (x,), **opts)
    stored = len(list(next(tmp_path.iterdir()).glob("*.json"))) - 1  # minus fingerprint.json
    assert stored == limit
    calls.clear()
    limit = -1
    table = measure_latency_table(net, (x,), **opts)
    unique = table.meta["unique_shapes"]
    assert len(calls) == unique - stored
    assert table.meta["from_cache"] == stored and table.meta["timed_now"] == unique - stored
    calls.clear()
    again = measure_latency_table(net, (x,), **opts)
    assert calls == [] and again.times == table.times


def test_fingerprint_mismatch_raises(
    net: nn.Module, x: torch.Tensor, table: LatencyTable, tmp_path: Path
) -> None:
    other = dict(table.meta["fingerprint"], threads=2)
    with pytest.raises(FingerprintMismatch, match="threads"):
        check_table(table, other)
    check_table(table, other, force=True)
    check_table(table, dict(table.meta["fingerprint"], input_shape=[[1, 3, 9, 9]]))
    # A saved table keeps its fingerprint; a paper CSV has none and needs force.
    table.write_json(tmp_path / "t.json")
    with pytest.raises(FingerprintMismatch):
        check_table(load_table(tmp_path / "t.json"), other)
    table.write_csv(tmp_path / "t.csv")
    csv = load_table(tmp_path / "t.csv")
    assert csv.times == pytest.approx(table.times)
    with pytest.raises(TableError, match="no fingerprint"):
        check_table(csv, table.meta["fingerprint"])
    # A cache directory whose stored fingerprint was tampered with is refused.
    cache = TimingCache(tmp_path / "cache", table.meta["fingerprint"])
    (cache.dir / "fingerprint.json").write_text(json.dumps(other))
    with pytest.raises(FingerprintMismatch):
        TimingCache(tmp_path / "cache", table.meta["fingerprint"])


def test_batch_option_sets_every_entry_shape(net: nn.Module, x: torch.Tensor) -> None:
    t = measure_latency_table(net, (x,), batch=3, protocol=FAST, end_to_end=False)
    assert t.meta["batch"] == 3 and t.meta["fingerprint"]["batch"] == 3
    assert all(b["shape"].split("@")[1].startswith("3x") for b in t.meta["blocks"].values())
