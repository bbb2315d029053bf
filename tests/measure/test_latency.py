"""LatencyTable.measure on ONNX Runtime CPU: entries, shapes, cache resume, fingerprints."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from latency_helpers import FAST
from torch import nn

import depthfx.measure.latency as latency
from depthfx.algebra import compose_all, from_conv
from depthfx.backends.base import get_backend
from depthfx.errors import FingerprintMismatch, TableError
from depthfx.measure.block_shapes import block_spec
from depthfx.measure.cache import TimingCache
from depthfx.passes.analyze import analyze
from depthfx.plans import Plan
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


def _real_merged(net: nn.Module, names: list[str]):
    mods = dict(net.named_modules())
    return compose_all([from_conv(mods[n]) for n in names])


def test_merged_shapes_match_the_algebra(net: nn.Module, x: torch.Tensor) -> None:
    """Kernel/stride/groups/padding of every entry equal the real composed conv (float64
    algebra on the model's own convs); the input shape is what the first conv really sees."""
    analysis = analyze(net, (x,))
    (chain,) = analysis.chains
    seen: dict[str, tuple[int, ...]] = {}
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, n=n: seen.__setitem__(n, tuple(inp[0].shape)))
        for n, m in net.named_modules()
        if isinstance(m, nn.Conv2d)
    ]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    for i, j in chain.valid_blocks():
        spec = block_spec(chain, i, j)
        real = _real_merged(net, [c.module for c in chain.convs[i:j]])
        assert spec.conv.kernel == real.kernel_size, (i, j)
        assert spec.conv.stride == real.stride, (i, j)
        assert spec.conv.groups == real.groups, (i, j)
        assert spec.conv.pads == real.padding, (i, j)
        assert spec.input_shape == seen[chain.convs[i].module], (i, j)
    # Spot checks against hand-derived values: the whole chain merged.
    whole = block_spec(chain, 0, 6)
    assert whole.conv.kernel == (3 + 2 + 2 + 2 * 0, 3 + 2 + 2 + 2 * 2)  # 1x3 after stride 2
    assert whole.conv.stride == (2, 2) and whole.conv.groups == 1


def test_activation_and_residual_per_block(net: nn.Module, x: torch.Tensor) -> None:
    (chain,) = analyze(net, (x,)).chains
    assert block_spec(chain, 0, 1).activation == ("relu",)
    assert block_spec(chain, 5, 6).activation == ("silu",)
    # Position 4 is linear in the original: a block ending there gets the preceding act type.
    assert block_spec(chain, 3, 4).activation == ("relu6",)
    # The add stays explicit only for blocks inside the body that end at its target.
    assert block_spec(chain, 3, 4).residual is not None
    assert block_spec(chain, 2, 4).residual is not None
    assert block_spec(chain, 1, 4).residual is None  # whole body: shortcut fused
    assert block_spec(chain, 0, 4).residual is None
    assert block_spec(chain, 2, 3).residual is None


def test_block_models_run_with_the_traced_output_shape(net: nn.Module, x: torch.Tensor) -> None:
    (chain,) = analyze(net, (x,)).chains
    be = get_backend("onnxruntime")
    for i, j in chain.valid_blocks():
        spec = block_spec(chain, i, j)
        (out,) = be.prepare(spec.onnx_model(), spec.inputs()).outputs()
        assert out.shape == chain.convs[j - 1].output_shape, (i, j)


def test_plan_groups_match_prepare_convert(net: nn.Module, x: torch.Tensor) -> None:
    """The convs convert() emits for a plan have the shapes of the plan's table entries."""
    from depthfx.passes.convert import convert
    from depthfx.passes.prepare import prepare
    from depthfx.plans import chain_plan

    analysis = analyze(net, (x,))
    (chain,) = analysis.chains
    for merge in ({4, 6}, {1, 2, 4, 6}, {6}):
        plan = Plan.for_analysis(analysis, [chain_plan([c.node for c in chain.convs], {6}, merge)])
        merged = convert(prepare(net, plan, (x,)), plan, (x,))
        convs = [m for m in merged.modules() if isinstance(m, nn.Conv2d)]
        groups = plan.chains[0].groups()
        assert len(convs) == len(groups)
        for conv, (i, j) in zip(convs, groups, strict=True):
            spec = block_spec(chain, i, j)
            assert tuple(conv.kernel_size) == spec.conv.kernel, (i, j)
            assert tuple(conv.stride) == spec.conv.stride, (i, j)
            assert conv.groups == spec.conv.groups, (i, j)


def test_prediction_of_the_original_is_the_end_to_end_latency(table: LatencyTable) -> None:
    assert latency.predict_ms(table, Plan(chains=())) == pytest.approx(
        table.meta["end_to_end_ms"], rel=1e-12
    )


def test_cache_resume_remeasures_nothing_stored(
    net: nn.Module, x: torch.Tensor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = latency._time
    calls: list[int] = []

    def counting(*args, **kwargs):
        if len(calls) == limit:
            raise KeyboardInterrupt  # simulate Ctrl-C in the middle of the build
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(latency, "_time", counting)
    opts = {"protocol": FAST, "cache_dir": tmp_path, "bound": False, "end_to_end": False}
    limit = 6
    with pytest.raises(KeyboardInterrupt):
        latency.measure_latency_table(net, (x,), **opts)
    stored = len(list(next(tmp_path.iterdir()).glob("*.json"))) - 1  # minus fingerprint.json
    assert stored == limit
    calls.clear()
    limit = -1
    table = latency.measure_latency_table(net, (x,), **opts)
    unique = table.meta["unique_shapes"]
    assert len(calls) == unique - stored
    assert table.meta["from_cache"] == stored and table.meta["timed_now"] == unique - stored
    calls.clear()
    again = latency.measure_latency_table(net, (x,), **opts)
    assert calls == [] and again.times == table.times


def test_fingerprint_mismatch_raises(
    net: nn.Module, x: torch.Tensor, table: LatencyTable, tmp_path: Path
) -> None:
    other = dict(table.meta["fingerprint"], threads=2)
    with pytest.raises(FingerprintMismatch, match="threads"):
        latency.check_table(table, other)
    latency.check_table(table, other, force=True)
    latency.check_table(table, dict(table.meta["fingerprint"], input_shape=[[1, 3, 9, 9]]))
    # A saved table keeps its fingerprint; a paper CSV has none and needs force.
    table.write_json(tmp_path / "t.json")
    with pytest.raises(FingerprintMismatch):
        latency.check_table(latency.load_table(tmp_path / "t.json"), other)
    table.write_csv(tmp_path / "t.csv")
    csv = latency.load_table(tmp_path / "t.csv")
    assert csv.times == pytest.approx(table.times)
    with pytest.raises(TableError, match="no fingerprint"):
        latency.check_table(csv, table.meta["fingerprint"])
    # A cache directory whose stored fingerprint was tampered with is refused.
    cache = TimingCache(tmp_path / "cache", table.meta["fingerprint"])
    (cache.dir / "fingerprint.json").write_text(json.dumps(other))
    with pytest.raises(FingerprintMismatch):
        TimingCache(tmp_path / "cache", table.meta["fingerprint"])


def test_batch_option_sets_every_entry_shape(net: nn.Module, x: torch.Tensor) -> None:
    t = latency.measure_latency_table(net, (x,), batch=3, protocol=FAST, end_to_end=False)
    assert t.meta["batch"] == 3 and t.meta["fingerprint"]["batch"] == 3
    assert all(b["shape"].split("@")[1].startswith("3x") for b in t.meta["blocks"].values())
