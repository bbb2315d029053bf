"""Block shapes of latency-table entries: merged kernels, activations, residuals, as built."""

from __future__ import annotations

import torch
from torch import nn

from depthfx.algebra import compose_all, from_conv
from depthfx.backends.base import get_backend
from depthfx.measure.block_shapes import block_spec
from depthfx.passes.analyze import analyze
from depthfx.passes.convert import convert
from depthfx.passes.prepare import prepare
from depthfx.plans import Plan, chain_plan


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


def test_small_input_crops_entries_and_converted_convs_alike(net: nn.Module) -> None:
    """At 3×3 the merged kernels are cropped to the input extent; convert emits exactly the
    cropped conv the table entry times, and the merged network still equals the prepared one."""
    x = torch.randn(2, 3, 3, 3)
    analysis = analyze(net, (x,))
    (chain,) = analysis.chains
    whole = block_spec(chain, 0, 6)
    full = _real_merged(net, [c.module for c in chain.convs])
    # 7×11 at stride 2: two outputs per axis read at most 3 + 2 rows/cols of the 3×3 input.
    assert full.kernel_size == (7, 11) and whole.conv.kernel == (5, 5)
    plan = Plan.for_analysis(analysis, [chain_plan([c.node for c in chain.convs], {6}, {6})])
    prepared = prepare(net, plan, (x,))
    merged = convert(prepared, plan, (x,))  # checks merged == prepared itself
    (conv,) = [m for m in merged.modules() if isinstance(m, nn.Conv2d)]
    assert tuple(conv.kernel_size) == whole.conv.kernel
    pad = next((m.padding for m in merged.modules() if isinstance(m, nn.ZeroPad2d)), None)
    top, bottom, left, right = whole.conv.pads
    assert (pad or (conv.padding[1],) * 2 + (conv.padding[0],) * 2) == (left, right, top, bottom)
    torch.testing.assert_close(merged(x), prepared.eval()(x), rtol=1e-4, atol=1e-5)
