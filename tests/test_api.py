"""compile → export_onnx → ONNX Runtime for torchvision CNNs: the ONNX file computes what the
merged torch module computes (1e-4), and the merged model has fewer convs.

Default run: ResNet-18 and MobileNetV2 on hand-made tables whose arithmetic the test checks
(with a measured table ResNet-18's dense 3×3 merges are never faster at 64×64, so only budgets
near 1.0 are feasible). Slow: MobileNetV2 with the measured default (latency table on ONNX
Runtime, proxy importance), which takes minutes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision
from torch import nn

import depthfx
from depthfx.passes.analyze import analyze
from depthfx.passes.convert import count_convs
from depthfx.records import Analysis
from depthfx.solver import ImportanceTable, LatencyTable

SHAPE = (1, 3, 64, 64)
FIXED_MS = 1.0  # the hand-made tables' time outside the chains


def group_ms(i: int, j: int) -> float:
    """Hand-made cost of the merge group of convs i+1 … j: pairs and triples are cheaper than
    their single convs, longer groups are not (as with real dense merged kernels, which grow
    with every conv and keep the test's merged kernels small)."""
    return 1.0 + 0.3 * (j - i - 1) ** 2


pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore:depthfx.compile merges without fine-tuning"),
]


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():  # non-trivial BN statistics, so folding them is exercised
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model


def _uniform_tables(analysis: Analysis) -> tuple[LatencyTable, ImportanceTable]:
    """Latency from :func:`group_ms`; importance is −(original activations removed), so the DP
    keeps as many as the budget allows."""
    times = {(c.index, i, j): group_ms(i, j) for c in analysis.chains for i, j in c.valid_blocks()}
    singles = sum(c.num_convs for c in analysis.chains) * group_ms(0, 1)
    latency = LatencyTable.from_entries(
        times, meta={"end_to_end_ms": FIXED_MS + singles, "fixed_ms": FIXED_MS}
    )
    scores = {}
    for chain in analysis.chains:
        acts = chain.default_acts
        for st, end, st_act, end_act in chain.extended_blocks():
            removed = sum(p in acts for p in range(st + 1, end)) + (end in acts and not end_act)
            scores[chain.index, st, end, st_act, end_act] = -float(removed)
    importance = ImportanceTable.from_entries(
        scores, norm="none", default_acts={c.index: c.default_acts for c in analysis.chains}
    )
    return latency, importance


def _check_onnx(merged: nn.Module, path: Path) -> None:
    """export_onnx, then ONNX Runtime on a fresh batch of 2 equals the merged module."""
    depthfx.export_onnx(merged, path, (torch.randn(SHAPE),))
    x = torch.randn(2, *SHAPE[1:], generator=torch.Generator().manual_seed(7))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = merged(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("name", "convs"), [("resnet18", 20), ("mobilenet_v2", 52)])
def test_compile_export_ort_on_given_tables(tmp_path: Path, name: str, convs: int) -> None:
    model = _model(name)
    x = torch.randn(SHAPE)
    analysis = analyze(model, (x,), training=False)
    latency, importance = _uniform_tables(analysis)
    merged = depthfx.compile(model, 0.8, (x,), latency=latency, importance=importance)
    plan, report = merged.depthfx_plan, merged.depthfx_report

    total = FIXED_MS + sum(c.num_convs for c in analysis.chains)  # every conv alone: 1 ms
    assert plan.budget_ms == pytest.approx(0.8 * total)
    groups = [g for c in plan.chains for g in c.groups()]
    assert plan.predicted_ms == pytest.approx(FIXED_MS + sum(group_ms(i, j) for i, j in groups))
    assert plan.predicted_ms <= plan.budget_ms * 1.01  # the DP floors times to integer units
    assert report.convs_before == count_convs(model) == convs
    assert report.convs_after == count_convs(merged) < report.convs_before
    assert report.max_abs_error < 1e-4
    _check_onnx(merged, tmp_path / f"{name}.onnx")


@pytest.mark.slow  # the measured tables take minutes (ORT latency of ~500 block shapes)
def test_mobilenet_v2_measured_default_compile_export_ort(tmp_path: Path) -> None:
    model = _model("mobilenet_v2")
    x = torch.randn(SHAPE)
    with pytest.warns(UserWarning, match="random inputs"):  # the proxy without data says so
        merged = depthfx.compile(
            model, 0.9, (x,),
            latency_options={"threads": 1, "cache_dir": tmp_path / "latency"},
            importance_options={"images": 4},
        )  # fmt: skip
    plan, report = merged.depthfx_plan, merged.depthfx_report
    assert plan.predicted_ms <= plan.budget_ms * 1.01  # floor discretisation slack
    assert plan.fingerprints["latency"]["backend"] == "onnxruntime"
    assert report.convs_before == count_convs(model) == 52
    assert report.convs_after == count_convs(merged) < report.convs_before
    _check_onnx(merged, tmp_path / "mobilenet_v2.onnx")
