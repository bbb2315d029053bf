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
from depthfx.measure.block_shapes import block_spec
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
    real = latency_table.time_entry
    calls: list[int] = []

    def counting(*args, **kwargs):
        if len(calls) == limit:
            raise KeyboardInterrupt  # simulate Ctrl-C in the middle of the build
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(latency_table, "time_entry", counting)
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


def test_blocks_the_backend_cannot_load_are_bounded_never_built(
    net: nn.Module, x: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With (pretend) 48 kB free, merged convs over 1000 weights cannot be built: they are
    bounded above their single convs, listed with the reason, and the build still succeeds."""
    built: list[int] = []
    real = latency_table._Builder.__call__

    def recording(self, spec):
        built.append(spec.conv.weight_numel())
        return real(self, spec)

    monkeypatch.setattr(latency_table._Builder, "__call__", recording)
    monkeypatch.setattr(latency_table, "available_memory", lambda: 48_000)
    table = measure_latency_table(net, (x,), protocol=FAST, bound=False, end_to_end=False)
    oversized = table.meta["oversized"]
    assert oversized and all("available" in why for why in oversized.values())
    built_blocks = built[1:]  # built[0] is the throughput probe (256×256 3×3), timed first
    assert max(built_blocks) <= 1000 < min(block_numel(net, x, key) for key in map(_key, oversized))
    for c, i, j in map(_key, oversized):
        singles = sum(table.times[c, p - 1, p] for p in range(i + 1, j + 1))
        assert table.times[c, i, j] > singles
    assert set(oversized) <= set(table.meta["bounded"])


def _key(text: str) -> tuple[int, int, int]:
    c, i, j = map(int, text.split(","))
    return c, i, j


def block_numel(net: nn.Module, x: torch.Tensor, key: tuple[int, int, int]) -> int:
    chain = analyze(net, (x,)).chains[key[0]]
    return block_spec(chain, key[1], key[2]).conv.weight_numel()


def _real_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "mobilenet_v2":
        import torchvision

        return torchvision.models.mobilenet_v2(weights=None).eval()
    import timm

    return timm.create_model(name, pretrained=False).eval()


@pytest.mark.slow  # minutes each: every valid block of a real network (general strides)
@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("name", ["mobilenet_v2", "tf_efficientnet_lite0"])
def test_real_networks_build_at_small_inputs(name: str, size: int) -> None:
    """Every block is timed or bounded (none too large to build escapes as an error), and the
    merged kernels are cropped to the input: none is wider than the map it reads plus the
    span of its outputs."""
    model = _real_model(name)
    x = torch.randn(1, 3, size, size)
    table = measure_latency_table(model, (x,), threads=1, calibrate=False, progress=False)
    assert all(math.isfinite(t) and t > 0 for t in table.times.values())
    for chain in analyze(model, (x,)).chains:
        for i, j in chain.valid_blocks():
            c, hw = block_spec(chain, i, j).conv, chain.convs[i].input_shape[2:]
            ho, wo = c.output_hw(hw)
            assert c.kernel[0] <= hw[0] + (ho - 1) * c.stride[0], (chain.index, i, j)
            assert c.kernel[1] <= hw[1] + (wo - 1) * c.stride[1], (chain.index, i, j)
