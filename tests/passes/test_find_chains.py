"""Chain finding on small graphs (one rule each) and on MobileNetV2 / VGG19-BN / ResNet-50."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import depthfx
from depthfx.passes.analyze import analyze
from depthfx.records import Analysis, Chain

X = torch.randn(1, 4, 12, 12)


def chains_of(model: nn.Module, x: torch.Tensor = X, **kw: object) -> list[Chain]:
    return analyze(model.eval(), x, **kw).chains  # type: ignore[arg-type]


def sizes(chains: list[Chain]) -> list[int]:
    return [c.num_convs for c in chains]


class Pair(nn.Module):
    """conv → act → conv, the act given as a callable on the tensor."""

    def __init__(
        self, act: Callable[[torch.Tensor], torch.Tensor], module: nn.Module | None = None
    ):
        super().__init__()
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.act_module = module
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        y = self.act_module(y) if self.act_module is not None else self.act(y)
        return self.b(y)


SPELLINGS = [
    ("module", nn.ReLU(), None, "relu", {}),
    ("module", nn.ReLU(inplace=True), None, "relu", {}),
    ("module", nn.ReLU6(), None, "relu6", {}),
    ("module", nn.Hardtanh(-2.0, 3.0), None, "hardtanh", {"min_val": -2.0, "max_val": 3.0}),
    ("module", nn.LeakyReLU(0.2), None, "leaky_relu", {"negative_slope": 0.2}),
    ("module", nn.SiLU(), None, "silu", {}),
    ("module", nn.Hardswish(), None, "hardswish", {}),
    ("module", nn.GELU(approximate="tanh"), None, "gelu", {"approximate": "tanh"}),
    ("module", nn.Mish(), None, "mish", {}),
    ("module", nn.ELU(0.5), None, "elu", {"alpha": 0.5}),
    ("module", nn.PReLU(4, 0.3), None, "prelu", {}),
    ("function", None, F.relu, "relu", {}),
    ("function", None, lambda t: F.relu(t, inplace=True), "relu", {}),
    ("function", None, torch.relu, "relu", {}),
    ("function", None, F.relu6, "relu6", {}),
    (
        "function",
        None,
        lambda t: F.hardtanh(t, -0.5, 0.5),
        "hardtanh",
        {"min_val": -0.5, "max_val": 0.5},
    ),
    ("function", None, lambda t: F.leaky_relu(t, 0.3), "leaky_relu", {"negative_slope": 0.3}),
    ("function", None, F.silu, "silu", {}),
    ("function", None, F.hardswish, "hardswish", {}),
    ("function", None, lambda t: F.gelu(t, approximate="tanh"), "gelu", {"approximate": "tanh"}),
    ("function", None, F.mish, "mish", {}),
    ("method", None, lambda t: t.relu(), "relu", {}),
    ("method", None, lambda t: t.relu_(), "relu", {}),
    ("method", None, lambda t: t.sigmoid(), "sigmoid", {}),
]


@pytest.mark.parametrize(("kind", "module", "fn", "op", "params"), SPELLINGS)
def test_activation_spellings(
    kind: str, module: nn.Module | None, fn: Callable | None, op: str, params: dict
) -> None:
    (chain,) = chains_of(Pair(fn, module))
    assert chain.num_convs == 2
    assert set(chain.activations) == {1}
    slot = chain.activations[1]
    assert (slot.kind, slot.op, slot.position) == (kind, op, 1)
    assert {k: slot.params[k] for k in params} == params
    t = torch.randn(2, 4, 5, 5)
    expected = (module or fn)(t.clone())  # type: ignore[operator]
    fresh = slot.make()
    assert not getattr(fresh, "inplace", False)
    torch.testing.assert_close(fresh(t), expected)
    assert chain.optional == {2}  # linear in the original, but the true end: fixed
    assert chain.pinned_flags == {2: 0}


def test_one_module_at_two_sites_gives_two_slots() -> None:
    class Reuse(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)
            self.relu = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.relu(self.b(self.relu(self.a(x))))

    (chain,) = chains_of(Reuse())
    assert [s.module for s in chain.activations.values()] == ["relu", "relu"]
    assert len({s.node for s in chain.activations.values()}) == 2


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize(
    ("conv", "padding", "shape"),
    [
        (nn.Conv2d(4, 4, 3, padding=1, groups=4), (1, 1, 1, 1), (1, 4, 12, 12)),
        (nn.Conv2d(4, 8, 3, padding=1, groups=2), (1, 1, 1, 1), (1, 8, 12, 12)),
        (nn.Conv2d(4, 4, 3, padding=2, dilation=2), (2, 2, 2, 2), (1, 4, 12, 12)),
        (nn.Conv2d(4, 4, 3, padding=1, stride=2), (1, 1, 1, 1), (1, 4, 6, 6)),
        (nn.Conv2d(4, 4, (1, 7), padding=(0, 3), bias=False), (0, 0, 3, 3), (1, 4, 12, 12)),
        (nn.Conv2d(4, 4, 4, padding="same"), (1, 2, 1, 2), (1, 4, 12, 12)),
        (nn.Conv2d(4, 4, (3, 2), padding="same", dilation=2), (2, 2, 1, 1), (1, 4, 12, 12)),
    ],
)
def test_conv_kinds(conv: nn.Conv2d, padding: tuple[int, ...], shape: tuple[int, ...]) -> None:
    model = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), conv, nn.ReLU())
    (chain,) = chains_of(model)
    info = chain.conv(2)
    assert info.padding == padding
    assert info.output_shape == shape
    assert (info.kernel, info.stride, info.dilation, info.groups) == (
        conv.kernel_size, conv.stride, conv.dilation, conv.groups
    )  # fmt: skip
    assert info.bias == (conv.bias is not None)
    assert chain.conv(1).bn == "1" and chain.conv(1).bn_kind == "module"
    assert info.is_depthwise == (conv.groups == 4 and conv.in_channels == 4)


def test_strided_paper_rule_breaks_after_strided_conv() -> None:
    convs = [nn.Conv2d(4, 4, 3, padding=1, stride=s) for s in (1, 2, 1, 1)]
    model = nn.Sequential(*[m for c in convs for m in (c, nn.ReLU())])
    (general,) = chains_of(model)
    (paper,) = chains_of(model, strided="paper")
    assert general.barriers == frozenset()
    assert paper.barriers == frozenset({3})
    assert len(general.valid_blocks()) == 10 and len(paper.valid_blocks()) == 7


def test_asymmetric_pad_node_is_absorbed() -> None:
    class Padded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 3, stride=2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(F.pad(F.relu(self.a(x)), (0, 1, 0, 1)))

    (chain,) = chains_of(Padded())
    assert chain.num_convs == 2
    assert chain.conv(2).padding == (0, 1, 0, 1)
    assert chain.conv(2).pad_node == "pad"
    assert chain.conv(2).input_shape == (1, 4, 12, 12)


def test_zero_pad_module_is_absorbed_and_dynamic_same_is_computed() -> None:
    timm_layers = pytest.importorskip("timm.layers")
    model = nn.Sequential(
        nn.ZeroPad2d((1, 2, 0, 1)),
        nn.Conv2d(4, 4, 3),
        timm_layers.Conv2dSame(4, 4, 3, stride=2),
    )
    (chain,) = chains_of(model, torch.randn(1, 4, 11, 11))
    assert chain.conv(1).padding == (0, 1, 1, 2) and chain.conv(1).pad_node is not None
    # input 10x12, k3 s2: pad_h = (5-1)*2+3-10 = 1 -> (0, 1); pad_w = (6-1)*2+3-12 = 1 -> (0, 1)
    assert chain.conv(2).conv_kind == "conv2d_same"
    assert chain.conv(2).padding == (0, 1, 0, 1)


def test_reflect_padding_starts_a_group() -> None:
    layers = [
        nn.Conv2d(4, 4, 3, padding=1),
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(4, 4, 1),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.Conv2d(4, 4, 3, padding=1),
    ]
    (chain,) = chains_of(nn.Sequential(*layers))
    assert chain.num_convs == 5
    assert chain.barriers == frozenset({1, 3})  # before the reflect conv and before the next pad


def test_se_gating_ends_chain() -> None:
    class SE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1)
            self.fc1, self.fc2 = nn.Conv2d(4, 2, 1), nn.Conv2d(2, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = F.relu(self.a(x))
            s = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(y, 1)))))
            return self.b(y * s)

    chains = chains_of(SE())
    assert [[c.module for c in ch.convs] for ch in chains] == [["a"], ["fc1", "fc2"], ["b"]]
    assert chains[1].activations[2].op == "sigmoid"


def test_concat_ends_chain() -> None:
    class Cat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1), nn.Conv2d(8, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c(torch.cat([self.a(x), self.b(x)], 1))

    assert sizes(chains_of(Cat())) == [1, 1, 1]


def test_tensor_used_twice_ends_chain() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = (nn.Conv2d(4, 4, 3, padding=1) for _ in range(3))

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            y = F.relu(self.a(x))
            return self.b(y), self.c(y)

    chains = chains_of(Twice())
    assert sizes(chains) == [1, 1, 1]
    assert "used by 2 ops" in chains[0].end_reason


def test_pre_activation_bn_is_not_folded() -> None:
    model = nn.Sequential(nn.Conv2d(4, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3))
    chains = chains_of(model)
    assert sizes(chains) == [1, 1]
    assert chains[0].conv(1).bn is None and chains[1].conv(1).bn is None


def test_reused_bn_and_groupnorm_are_barriers() -> None:
    class SharedBN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.b(self.bn(self.a(x))))

    assert sizes(chains_of(SharedBN())) == [1, 1]
    model = nn.Sequential(nn.Conv2d(4, 4, 1), nn.GroupNorm(2, 4), nn.Conv2d(4, 4, 1))
    assert sizes(chains_of(model)) == [1, 1]
    model = nn.Sequential(nn.Conv2d(4, 4, 1), nn.Conv1d(4, 4, 1))
    with pytest.raises(depthfx.CaptureError):  # shape error at the Conv1d is reported
        chains_of(model)


class Bottleneck(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, drop: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.drop = drop or nn.Identity()
        self.down = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.drop(self.bn2(self.conv2(out)))
        out += x if self.down is None else self.down(x)
        return F.relu(out)


def test_projection_and_identity_residuals_with_transparent_ops() -> None:
    timm_layers = pytest.importorskip("timm.layers")
    model = nn.Sequential(
        nn.Conv2d(4, 8, 1),
        Bottleneck(8, 16, 2, nn.Dropout(0.1)),
        Bottleneck(16, 16, 1, timm_layers.DropPath(0.1)),
        nn.Conv2d(16, 4, 1),
    )
    (chain,) = chains_of(model)
    assert chain.num_convs == 6
    assert [(r.src, r.dst, r.kind) for r in chain.residuals] == [
        (1, 3, "projection"),
        (3, 5, "identity"),
    ]
    proj = chain.residuals[0].shortcut
    assert proj is not None and proj.module == "1.down.0" and proj.bn == "1.down.1"
    assert proj.stride == (2, 2)
    assert chain.activations[3].node == chain.position_nodes[3]  # act after the add
    assert chain.transparent == {3: ("_1_drop",), 5: ("_2_drop",)}  # kept in the chain
    assert len(chain.position_nodes) == 7


def test_unclosed_fork_cuts_chain_back() -> None:
    class Fork(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = (nn.Conv2d(4, 4, 1) for _ in range(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.a(x)
            z = self.c(self.b(y))
            return z * (y + x)  # y + x looks like a residual add but is not on the chain

    chains = chains_of(Fork())
    assert sizes(chains) == [1, 2]
    assert chains[0].residuals == [] and "several users" in chains[0].end_reason


def test_timm_batchnorm_act_is_bn_plus_activation() -> None:
    timm_layers = pytest.importorskip("timm.layers")
    model = nn.Sequential(
        nn.Conv2d(4, 4, 3, padding=1, bias=False),
        timm_layers.BatchNormAct2d(4, act_layer=nn.SiLU),
        nn.Conv2d(4, 4, 1, bias=False),
        timm_layers.BatchNormAct2d(4, apply_act=False),
    )
    (chain,) = chains_of(model)
    assert chain.num_convs == 2
    assert chain.conv(1).bn == "1" and chain.conv(1).bn_kind == "norm_act"
    slot = chain.activations[1]
    assert (slot.kind, slot.op, slot.module, slot.node) == ("norm_act", "silu", "1.act", "_1")
    assert 2 not in chain.activations and chain.conv(2).bn == "3"


def test_functional_batchnorm_records_attributes() -> None:
    class FBN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 1)
            self.w, self.b = nn.Parameter(torch.ones(4)), nn.Parameter(torch.zeros(4))
            self.register_buffer("rm", torch.zeros(4))
            self.register_buffer("rv", torch.ones(4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.batch_norm(self.conv(x), self.rm, self.rv, self.w, self.b, False, 0.1, 1e-3)
            return F.relu(x)

    model = nn.Sequential(FBN(), nn.Conv2d(4, 4, 1))
    (chain,) = chains_of(model)
    info = chain.conv(1)
    assert info.bn_kind == "function" and info.bn_attrs == ("0.rm", "0.rv", "0.w", "0.b")
    assert info.bn_eps == pytest.approx(1e-3) and chain.num_convs == 2


def test_exclude_is_a_barrier_and_frees_the_end() -> None:
    model = nn.Sequential(*(nn.Conv2d(4, 4, 1) for _ in range(4)))
    chains = chains_of(model, exclude=("2",))
    assert sizes(chains) == [2, 1]
    assert chains[0].free_end and chains[0].pinned_flags == {}
    assert not chains[1].free_end and chains[1].pinned_flags == {1: 0}
    with pytest.raises(depthfx.DepthFXError, match="nope"):
        chains_of(model, exclude=("nope",))


def test_activation_for_uses_the_chain_type() -> None:
    model = nn.Sequential(
        nn.Conv2d(4, 4, 1),
        nn.Conv2d(4, 4, 1),
        nn.Hardswish(),
        nn.Conv2d(4, 4, 1),
        nn.Conv2d(4, 4, 1),
    )
    (chain,) = chains_of(model)
    assert chain.optional == {1, 3, 4}  # 4: linear, but the fixed end
    assert chain.activation_for(1).op == "hardswish"  # type: ignore[union-attr]
    assert chain.activation_for(4).node == "_2"  # type: ignore[union-attr]


# ---- real models ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mbv2() -> nn.Module:
    return torchvision.models.mobilenet_v2(weights=None).eval()


def test_mobilenet_v2_general(mbv2: nn.Module) -> None:
    a = analyze(mbv2, torch.randn(1, 3, 64, 64))
    (chain,) = a.chains
    assert chain.num_convs == 52
    assert chain.conv(1).module == "features.0.0" and chain.conv(52).module == "features.18.0"
    assert all(r.kind == "identity" for r in chain.residuals) and len(chain.residuals) == 10
    assert len(chain.activations) == 35
    assert {s.op for s in chain.activations.values()} == {"relu6"}
    strided = [p for p in range(1, 53) if chain.conv(p).stride == (2, 2)]
    assert strided == [1, 5, 11, 20, 41]
    assert all(chain.conv(p).is_depthwise for p in strided[1:])
    assert chain.barriers == frozenset()


def test_mobilenet_v2_paper_chain(mbv2: nn.Module) -> None:
    a = analyze(
        mbv2, torch.randn(1, 3, 64, 64), strided="paper", exclude=("features.0.0", "features.18.0")
    )
    (chain,) = a.chains
    assert chain.num_convs == 50
    assert chain.residual_map == {
        5: 8, 11: 14, 14: 17, 20: 23, 23: 26, 26: 29, 32: 35, 35: 38, 41: 44, 44: 47
    }  # fmt: skip
    assert chain.barriers == frozenset({5, 11, 20, 41})
    assert chain.optional == frozenset(range(2, 51, 3))
    assert chain.default_acts == frozenset(range(1, 51)) - frozenset(range(2, 51, 3))
    assert len(chain.valid_blocks()) == 171
    assert len(chain.extended_blocks()) == 315
    assert chain.input_node == "features_0_2"
    out = a.to_json()["chains"][0]
    assert (out["valid_blocks"], out["extended_blocks"], out["num_convs"]) == (171, 315, 50)


def test_vgg19_bn() -> None:
    a = analyze(
        torchvision.models.vgg19_bn(weights=None).eval(), torch.randn(1, 3, 32, 32), strided="paper"
    )
    assert sizes(a.chains) == [2, 2, 4, 4, 4]
    assert sum(len(c.valid_blocks()) for c in a.chains) == 36
    assert all(c.conv(1).bn is not None for c in a.chains)
    assert all("MaxPool2d" in c.end_reason for c in a.chains)


def test_resnet50() -> None:
    a = analyze(torchvision.models.resnet50(weights=None).eval(), torch.randn(1, 3, 64, 64))
    assert sizes(a.chains) == [1, 48]
    chain = a.chains[1]
    assert len(chain.residuals) == 16
    assert [r.src for r in chain.residuals if r.kind == "projection"] == [0, 9, 21, 39]
    slots = [s for s in chain.activations.values() if s.module == "layer1.0.relu"]
    assert len(slots) == 3 and len({s.node for s in slots}) == 3
    assert isinstance(a, Analysis) and "layer4.2.conv3" in str(a)
