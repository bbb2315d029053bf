"""The affine map of a group input in a dynamo graph: every map reproduces its node."""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch._dynamo import register_backend

from depthfx.dynamo.maps import AffineMap, propagate, spatial_size

GRAPHS: list[tuple[fx.GraphModule, list[torch.Tensor]]] = []


@register_backend(name="depthfx_test_maps")
def _record(gm: fx.GraphModule, example_inputs: list[torch.Tensor]):
    GRAPHS.append((gm, example_inputs))
    return gm.forward


class Residuals(nn.Module):
    """Prepare's shapes: unpadded convs + BN, a cropped identity, a cropped projection, a conv
    padding the group input itself, and ops that are not maps (a relu, a padded inner conv)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, groups=2)
        self.down = nn.Conv2d(4, 6, 3, stride=2)
        self.shortcut = nn.Conv2d(4, 6, 1, stride=2)
        self.same = nn.Conv2d(4, 4, 3, padding=1)
        self.inner = nn.Conv2d(4, 4, 3, padding=1)
        self.bn1.running_mean.uniform_(-1, 1)
        self.bn1.running_var.uniform_(0.5, 2)

    def forward(self, x: torch.Tensor):
        y = self.conv2(self.bn1(self.conv1(x))) + x[:, :, 2:-2, 2:-2]
        z = self.down(y) + self.shortcut(y[:, :, 1:, 1:])
        return z, self.same(x), self.inner(torch.relu(self.conv1(x)))


def _evaluate(m: AffineMap, x: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
    """The map applied to x (float64), bottom/right extent from the node's size as _emit does."""
    (h, w), (ho, wo) = x.shape[-2:], out_size
    (kh, kw), (sh, sw), (top, left) = m.conv.kernel_size, m.conv.stride, m.offset
    bottom, right = sh * (ho - 1) + kh - top - h, sw * (wo - 1) + kw - left - w
    padded = F.pad(x.double(), [left, right, top, bottom])
    return F.conv2d(padded, m.conv.weight, m.conv.bias, m.conv.stride, groups=m.conv.groups)


def test_every_map_reproduces_its_node() -> None:
    torch.manual_seed(0)
    model = Residuals().eval()
    x = torch.randn(1, 4, 13, 13)
    GRAPHS.clear()
    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(model, backend="depthfx_test_maps")(x)
    ((gm, example_inputs),) = GRAPHS
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    values = dict(zip(placeholders, example_inputs, strict=False))
    (source,) = [n for n, v in values.items() if v is x]
    maps = propagate(gm, values, source, set())

    results: dict[fx.Node, torch.Tensor] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node):
            out = super().run_node(n)
            if isinstance(out, torch.Tensor):
                results[n] = out.clone()
            return out

    with torch.no_grad():
        Recorder(gm).run(*example_inputs)
    adds = [n for n in maps if n.target in (operator.add, operator.iadd, torch.add)]
    convs = [n for n in maps if n.target is torch.conv2d]
    assert len(adds) == 2  # the cropped identity and the cropped projection
    assert len(convs) == 6  # conv1 (twice: both uses), conv2, down, shortcut, same; not inner
    assert not any(n.target is torch.relu for n in maps)
    for node, m in maps.items():
        want = results[node].double()
        got = _evaluate(m, x, spatial_size(node))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=node.name)
