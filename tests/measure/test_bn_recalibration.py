"""recalibrate_bn: only BN buffers change, cumulative statistics, dropout off, exact to convert,
used by compile with data."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import depthfx
from depthfx.errors import DepthFXError
from depthfx.passes.analyze import analyze
from depthfx.testing import TinyResidual, merge_everything_plan, randomize_bn

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Probe(nn.Module):
    """conv-bn-relu, dropout (whose mode during the passes is recorded), conv-bn."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.5)
        self.c2, self.b2 = nn.Conv2d(8, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.drop_modes: list[bool] = []
        self.drop.register_forward_hook(lambda m, i, o: self.drop_modes.append(m.training))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b2(self.c2(self.drop(torch.relu(self.b1(self.c1(x))))))


def test_only_bn_buffers_change_and_modes_are_restored() -> None:
    torch.manual_seed(0)
    model = randomize_bn(Probe()).train()
    model.b2.momentum = 0.3
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(32, 3, 8, 8) * 3 + 1
    depthfx.recalibrate_bn(model, x, batch_size=8)
    after = model.state_dict()
    bn_buffers = {f"{b}.{n}" for b in ("b1", "b2") for n in ("running_mean", "running_var")}
    for k, v in after.items():
        if k in bn_buffers:
            assert not torch.equal(v, before[k]), k
        elif not k.endswith("num_batches_tracked"):
            assert torch.equal(v, before[k]), k
    assert model.training and all(m.training for m in model.modules())
    assert model.b2.momentum == 0.3 and model.b1.momentum == 0.1
    assert model.drop_modes == [False] * 4  # dropout in eval during the passes
    assert int(model.b1.num_batches_tracked) == 4


def test_two_batches_are_not_an_inputs_labels_pair() -> None:
    """A list of two input batches is two batches; (inputs, labels) uses the inputs."""
    batches = [torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5) * 2 + 1]
    two, pair = nn.BatchNorm2d(3), nn.BatchNorm2d(3)
    depthfx.recalibrate_bn(two, batches)
    assert int(two.num_batches_tracked) == 2
    mean = torch.stack([b.mean((0, 2, 3)) for b in batches]).mean(0)
    assert torch.allclose(two.running_mean, mean, atol=1e-6)
    depthfx.recalibrate_bn(pair, (batches[1], torch.zeros(4, dtype=torch.long)))
    assert torch.allclose(pair.running_mean, batches[1].mean((0, 2, 3)), atol=1e-6)


def test_cumulative_average_of_the_batches() -> None:
    bn = nn.BatchNorm2d(3)
    batches = [torch.randn(4, 3, 5, 5) * s + s for s in (1.0, 2.0, 3.0)]
    depthfx.recalibrate_bn(bn, batches)
    means = torch.stack([b.mean((0, 2, 3)) for b in batches]).mean(0)
    var = torch.stack([b.var((0, 2, 3), unbiased=True) for b in batches]).mean(0)
    torch.testing.assert_close(bn.running_mean, means)
    torch.testing.assert_close(bn.running_var, var)
    depthfx.recalibrate_bn(bn, list(reversed(batches)), batches=3)  # order does not matter
    torch.testing.assert_close(bn.running_mean, means)
    depthfx.recalibrate_bn(bn, batches, batches=1)
    torch.testing.assert_close(bn.running_mean, batches[0].mean((0, 2, 3)))


def test_empty_data_is_an_error() -> None:
    with pytest.raises(DepthFXError, match="no batch"):
        depthfx.recalibrate_bn(nn.BatchNorm2d(3), [])


def test_recalibrated_prepared_network_converts_exactly() -> None:
    torch.manual_seed(0)
    model = randomize_bn(TinyResidual()).eval()
    x = torch.randn(1, 3, 16, 16)
    plan = merge_everything_plan(analyze(model, (x,)))
    prepared = depthfx.prepare(model, plan, (x,))
    data = (torch.randn(64, 3, 16, 16), torch.zeros(64, dtype=torch.long))
    depthfx.recalibrate_bn(prepared, data, batch_size=16)
    merged = depthfx.convert(prepared, plan, (x,))  # raises if not exact
    batch = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(merged(batch), prepared.eval()(batch), rtol=1e-4, atol=1e-4)


def test_compile_with_data_recalibrates() -> None:
    from depthfx.solver import ImportanceTable, LatencyTable

    torch.manual_seed(0)
    model = randomize_bn(TinyResidual()).eval()
    x = torch.randn(1, 3, 16, 16)
    analysis = analyze(model, (x,), training=False)
    times = {(c.index, i, j): 1.0 for c in analysis.chains for i, j in c.valid_blocks()}
    latency = LatencyTable.from_entries(times, meta={"end_to_end_ms": 4.0, "fixed_ms": 1.0})
    scores = {(c.index, *e): 0.0 for c in analysis.chains for e in c.extended_blocks()}
    importance = ImportanceTable.from_entries(
        scores, norm="none", default_acts={c.index: c.default_acts for c in analysis.chains}
    )
    data = torch.randn(32, 3, 16, 16) * 2
    reports, outputs = {}, {}
    for flag in (True, False):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            merged = depthfx.compile(
                model, 0.5, (x,), latency=latency, importance=importance, data=data,
                bn_recalibration=flag,
            )  # fmt: skip
        reports[flag] = merged.depthfx_report
        assert reports[flag].max_abs_error < 1e-3
        with torch.no_grad():
            outputs[flag] = merged(data)
    assert not torch.allclose(outputs[True], outputs[False])
    assert reports[True].extra["bn_recalibrated"] is True
    assert reports[False].extra["bn_recalibrated"] is False
