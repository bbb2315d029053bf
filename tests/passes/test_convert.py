"""convert: plan checks, self-check, graph hygiene, size guard, export to torch.export/ONNX."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

from depthfx.errors import MergeMismatch
from depthfx.models import load_model
from depthfx.passes.align_residuals import crop_like, shift
from depthfx.passes.analyze import analyze
from depthfx.passes.convert import convert, count_convs
from depthfx.passes.group_record import PREPARED_ATTR
from depthfx.passes.prepare import prepare
from depthfx.plans import PlanError
from depthfx.testing import (
    TinyResidual,
    merge_everything_plan,
    original_plan,
    random_plan,
    randomize_bn,
    single_chain_plan,
)


def _randomized(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return randomize_bn(model).eval()


@pytest.fixture(scope="module")
def resnet18() -> tuple[nn.Module, torch.Tensor]:
    return _randomized(load_model("torchvision:resnet18")), torch.randn(2, 3, 32, 32)


def _expected_convs(prepared: fx.GraphModule) -> int:
    """Prepared convs, minus the convs each group absorbs, minus fused projection shortcuts."""
    groups = getattr(prepared, PREPARED_ATTR).groups
    absorbed = sum(len(g.convs) - 1 for g in groups)
    projections = sum(r.kind == "projection" for g in groups for r in g.residuals)
    return count_convs(prepared) - absorbed - projections


def _assert_clean(merged: fx.GraphModule) -> None:
    graph = merged.graph
    assert all(n.users or n.op == "output" for n in graph.nodes), "dead nodes left"
    called = {n.target for n in graph.nodes if n.op in ("call_module", "get_attr")}
    for name, module in merged.named_modules():
        if name and not any(module.children()):
            assert any(t == name or str(t).startswith(name + ".") for t in called), name


def test_conv_count_and_hygiene(resnet18: tuple[nn.Module, torch.Tensor]) -> None:
    model, x = resnet18
    for plan in (random_plan(analyze(model, x), seed=0), original_plan(analyze(model, x))):
        prepared = prepare(model, plan, (x,))
        merged = convert(prepared, plan, (x,))
        assert count_convs(merged) == _expected_convs(prepared)
        _assert_clean(merged)
        assert not merged.training


def test_fused_residuals_leave_no_crops() -> None:
    model, x = _randomized(TinyResidual()), torch.randn(2, 3, 12, 12)
    plan = single_chain_plan(model, x, {3}, {3})
    prepared = prepare(model, plan, (x,))
    assert any(n.target is crop_like for n in prepared.graph.nodes)
    merged = convert(prepared, plan, (x,))
    assert not any(n.target in (crop_like, shift) for n in merged.graph.nodes)
    assert count_convs(merged) == 1


def test_plan_must_match(resnet18: tuple[nn.Module, torch.Tensor]) -> None:
    model, x = resnet18
    analysis = analyze(model, x)
    prepared = prepare(model, random_plan(analysis, seed=0), (x,))
    with pytest.raises(PlanError, match="differs"):
        convert(prepared, random_plan(analysis, seed=1), (x,))
    with pytest.raises(PlanError, match="prepare"):
        convert(model, random_plan(analysis, seed=0))  # type: ignore[arg-type]


def test_mismatch_names_the_group() -> None:
    """With zero tolerance fp32 round-off is a mismatch, reported for the merged group."""
    model, x = _randomized(TinyResidual()), torch.randn(2, 3, 12, 12)
    plan = single_chain_plan(model, x, {3}, {3})
    prepared = prepare(model, plan, (x,))
    with pytest.raises(MergeMismatch, match=r"group 0->3 of chain 0 \(conv1 … conv3\).*max"):
        convert(prepared, plan, (x,), rtol=0.0, atol=0.0)


def test_oversized_kernels_are_refused_before_any_composition() -> None:
    """MobileNetV2 merged end to end (total stride 32): one 491×491 kernel, which the limit
    counts cropped to the input (32×32 at 32×32: 31 MiB in float64)."""
    model, x = load_model("torchvision:mobilenet_v2").eval(), torch.randn(1, 3, 32, 32)
    plan = merge_everything_plan(analyze(model, x))
    with pytest.raises(PlanError, match="32×32 kernel"):
        convert(prepare(model, plan, (x,)), plan, (x,), max_kernel_bytes=16 << 20)


@pytest.mark.slow  # about a minute and 5 GB: the partial kernels before the crop are large
def test_whole_mobilenet_v2_merges_at_32_into_a_cropped_kernel() -> None:
    """At 32×32 the same 491×491 kernel meets real pixels with its central 32×32 taps only:
    convert composes just those (checking itself against the prepared network)."""
    model, x = _randomized(load_model("torchvision:mobilenet_v2")), torch.randn(1, 3, 32, 32)
    plan = merge_everything_plan(analyze(model, x))
    merged = convert(prepare(model, plan, (x,)), plan, (x,))
    (conv,) = [m for m in merged.modules() if isinstance(m, nn.Conv2d)]
    assert tuple(conv.kernel_size) == (32, 32)


def test_torch_export_and_compile(resnet18: tuple[nn.Module, torch.Tensor]) -> None:
    model, x = resnet18
    plan = random_plan(analyze(model, x), seed=2)
    merged = convert(prepare(model, plan, (x,)), plan, (x,))
    with torch.no_grad():
        want = merged(x)
        exported = torch.export.export(merged, (x,))
        torch.testing.assert_close(exported.module()(x), want)
        compiled = torch.compile(merged, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(x), want)


def test_onnx_mobilenet_v2(tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model, x = _randomized(load_model("torchvision:mobilenet_v2")), torch.randn(2, 3, 32, 32)
    plan = random_plan(analyze(model, x), seed=0)
    merged = convert(prepare(model, plan, (x,)), plan, (x,))
    path = tmp_path / "merged.onnx"
    torch.onnx.export(merged, (x,), str(path), dynamo=True)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    convs = sum(n.op_type == "Conv" for n in proto.graph.node)
    assert convs == count_convs(merged)  # one Conv per merge group, plus convs outside chains
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), merged(x), rtol=1e-4, atol=1e-4)
