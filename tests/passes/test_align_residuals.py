"""align_residuals: a fused residual's identity (or projection input) is cropped to the body's
output at the body's padding; a kept residual ending a group makes the body its output."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

from depthfx.algebra import group_padding
from depthfx.passes.align_residuals import crop_like, shift
from depthfx.passes.chain_rewrite import ChainRewrite
from depthfx.passes.prepare import CHAIN_PASSES
from depthfx.testing import InvertedResidual, TinyResidual, chain_rewrite


class Projection(nn.Module):
    """conv-BN-ReLU, then a strided basic block with a 1×1 projection shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv1, self.bn1 = nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.short, self.bns = nn.Conv2d(8, 16, 1, stride=2), nn.BatchNorm2d(16)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn0(self.stem(x)))
        z = self.relu(self.bn1(self.conv1(y)))
        return self.relu(self.bn2(self.conv2(z)) + self.bns(self.short(y)))


def _stem_and_block() -> nn.Module:
    """conv-BN-ReLU, then an inverted residual: 4 convs, identity (1, 4)."""
    stem = (nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
    return nn.Sequential(*stem, InvertedResidual(8)).eval()


def _rewritten(model: nn.Module, act: set[int], merge: set[int]) -> ChainRewrite:
    rewrite = chain_rewrite(model.eval(), torch.randn(1, 3, 12, 12), act, merge)
    for chain_pass in CHAIN_PASSES:
        chain_pass(rewrite)
    rewrite.gm.graph.lint()
    return rewrite


def _values(gm: fx.GraphModule, x: torch.Tensor) -> dict[str, torch.Tensor]:
    values: dict[str, torch.Tensor] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> object:
            out = super().run_node(n)
            if isinstance(out, torch.Tensor):
                values[n.name] = out.clone()  # in-place activations would overwrite it
            return out

    with torch.no_grad():
        Recorder(gm.eval()).run(x)
    return values


def _body_and_other(add: fx.Node, body_node: str) -> tuple[fx.Node, fx.Node]:
    (body,) = [a for a in add.args if a.name == body_node]
    (other,) = [a for a in add.args if a is not body]
    return body, other


@pytest.mark.parametrize(
    ("model", "act", "merge", "source"),
    [
        (TinyResidual, {3}, {3}, "value"),  # body (1, 3) inside group (0, 3)
        (_stem_and_block, {1}, {1, 4}, "padded"),  # body (1, 4) is group (1, 4)
    ],
)
def test_identity_is_cropped_to_the_body(model, act, merge, source) -> None:
    rewrite = _rewritten(model(), act, merge)
    (residual,) = rewrite.chain.residuals
    add = rewrite.nodes[residual.add_node]
    body, crop = _body_and_other(add, rewrite.chain.convs[residual.dst - 1].output_node)
    top, _, left, _ = group_padding(rewrite.chain.convs[residual.src : residual.dst])
    (start,) = [r.start for r in rewrite.records if r.start <= residual.src < r.end]
    origin = rewrite.padded[start] if source == "padded" else rewrite.value[residual.src]
    assert crop.target is crop_like and crop.args == (origin, body, top, left)

    values = _values(rewrite.gm, torch.randn(2, 3, 12, 12))
    x, y = values[origin.name], values[body.name]
    assert values[crop.name].shape == y.shape
    assert torch.equal(values[crop.name], x[:, :, top : top + y.shape[2], left : left + y.shape[3]])


def test_projection_reads_the_shifted_input_and_is_cropped() -> None:
    rewrite = _rewritten(Projection(), {1, 3}, {1, 3})
    (residual,) = rewrite.chain.residuals
    assert residual.kind == "projection"
    add = rewrite.nodes[residual.add_node]
    body, crop = _body_and_other(add, rewrite.chain.convs[2].output_node)
    top, _, left, _ = group_padding(rewrite.chain.convs[1:3])
    shifted = rewrite.nodes[residual.shortcut.node].args[0]
    assert shifted.target is shift and shifted.args == (rewrite.padded[1], top, left)
    assert crop.target is crop_like and crop.args == (rewrite.nodes["bns"], body, 0, 0)
    values = _values(rewrite.gm, torch.randn(2, 3, 12, 12))
    assert values[crop.name].shape == values[body.name].shape


def test_kept_residual_makes_the_body_the_group_output() -> None:
    rewrite = _rewritten(_stem_and_block(), {1, 2}, {1, 2, 4})
    (residual,) = rewrite.chain.residuals
    last = rewrite.records[-1]
    assert (last.start, last.end) == (2, 4) and residual.src < last.start
    assert rewrite.linear[4].name == residual.add_node  # before: the add
    assert last.output == rewrite.chain.convs[3].output_node  # now: the body
    assert not any(n.target in (crop_like, shift) for n in rewrite.gm.graph.nodes)
