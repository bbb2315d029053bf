"""trim_ring: ring_conv equals a plain conv on maps with a constant ring; the ring-skipping
view computes the prepared network's outputs, gradients and BN statistics (float64, train and
eval mode), and a network fine-tuned through it converts exactly."""

from __future__ import annotations

import copy
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import depthfx
from depthfx.models import load_model
from depthfx.passes.analyze import analyze
from depthfx.passes.convert import convert
from depthfx.passes.prepare import prepare
from depthfx.passes.ring_ops import RingBatchNorm, fill, ring_conv
from depthfx.passes.trim_ring import conv_window, ring_view
from depthfx.testing import InvertedResidual, merge_everything_plan, random_plan, randomize_bn


def _ring_map(rng: random.Random, size: tuple[int, int], channels: int) -> tuple:
    """A float64 map (2 samples) random inside a random box, a per-channel constant (the same
    for both samples, as in the view) outside it; and the box."""
    box = []
    for extent in size:
        lo = rng.randint(0, extent - 1)
        box.append((lo, rng.randint(lo + 1, extent)))
    x = torch.randn(1, channels, 1, 1, dtype=torch.float64).expand(2, channels, *size).clone()
    (r0, r1), (c0, c1) = box
    x[:, :, r0:r1, c0:c1] = torch.randn(2, channels, r1 - r0, c1 - c0, dtype=torch.float64)
    return x, ((r0, r1), (c0, c1))


def _ring_conv_case(seed: int) -> tuple[nn.Conv2d, torch.Tensor, tuple, tuple[int, int]]:
    """A random float64 conv (groups, kernel, stride, dilation, bias) without padding, a ring
    map for it (:func:`_ring_map`), the map's live box and its size."""
    rng = random.Random(seed)
    groups = rng.choice([1, 2, 4])
    cin, cout = 4 * rng.randint(1, 2), 4 * rng.randint(1, 2)
    kernel = (rng.randint(1, 4), rng.randint(1, 4))
    stride, dilation = (rng.randint(1, 3), rng.randint(1, 3)), (rng.randint(1, 2), 1)
    size = (rng.randint(8, 20), rng.randint(8, 20))
    conv = nn.Conv2d(cin, cout, kernel, stride, 0, dilation, groups, rng.random() < 0.5).double()
    x, box = _ring_map(rng, size, cin)
    return conv, x, box, size


@pytest.mark.parametrize("seed", range(40))
def test_ring_conv_equals_plain_conv(seed: int) -> None:
    conv, x, box, size = _ring_conv_case(seed)
    (r0, r1), (c0, c1) = box
    const = (x[:1, :, :1, :1] if (r0, c0) != (0, 0) else x[:1, :, -1:, -1:]).clone()
    if box == ((0, size[0]), (0, size[1])):
        const = torch.zeros_like(const)  # no ring: any constant will do
    read, live = conv_window(box, ((0, size[0]), (0, size[1])), conv)
    params = (conv.weight, conv.bias, conv.stride, conv.dilation, conv.groups)
    out, ring = ring_conv(x[:, :, r0:r1, c0:c1] - const, const, *params, box, read)
    want = F.conv2d(x, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)
    whole = ((0, want.shape[2]), (0, want.shape[3]))
    torch.testing.assert_close(fill(out, ring, live, whole), want, rtol=1e-12, atol=1e-12)
    # the live box is tight enough to matter: outside it the reference is the one constant
    (o0, o1), (p0, p1) = live
    outside = torch.ones(want.shape[2:], dtype=torch.bool)
    outside[o0:o1, p0:p1] = False
    if outside.any() and box != ((0, size[0]), (0, size[1])):
        values = want[:, :, outside]
        torch.testing.assert_close(values, ring[:, :, 0].expand_as(values), rtol=0, atol=1e-12)


def test_ring_conv_cases_cover_both_paths() -> None:
    """The seeds above reach both of ring_conv's paths: the conv padding the delta itself
    (read extends the box by at most as much after as before), and the built window."""
    padded = []
    for seed in range(40):
        conv, _, box, size = _ring_conv_case(seed)
        read, _ = conv_window(box, ((0, size[0]), (0, size[1])), conv)
        pads = [(b[0] - r[0], r[1] - b[1]) for b, r in zip(box, read, strict=True)]
        padded.append(all(0 <= after <= before for before, after in pads))
    assert 5 <= sum(padded) <= 35


def _net() -> nn.Module:
    """Strided, dilated, grouped convs and identity residuals, BN everywhere."""

    def cbr(cin: int, cout: int, k: int, s: int = 1, d: int = 1, g: int = 1) -> list[nn.Module]:
        pad = d * (k // 2)
        return [nn.Conv2d(cin, cout, k, s, pad, d, g, bias=False), nn.BatchNorm2d(cout),
                nn.ReLU()]  # fmt: skip

    return nn.Sequential(
        *cbr(3, 8, 3, 2), InvertedResidual(8, 2), *cbr(8, 8, 3, 1, 2, 2), *cbr(8, 16, 3, 2),
        InvertedResidual(16, 2), *cbr(16, 16, 5), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, 5),
    )  # fmt: skip


def _models() -> list[tuple[str, nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    return [
        ("net", randomize_bn(_net()), torch.randn(3, 3, 24, 24)),
        ("resnet18", randomize_bn(load_model("torchvision:resnet18")), torch.randn(2, 3, 32, 32)),
    ]


def _outputs_and_grads(net: nn.Module, params: list[torch.Tensor], x: torch.Tensor) -> tuple:
    out = net(x)
    loss = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum()
    return out, torch.autograd.grad(loss, params)


@pytest.mark.parametrize("plan_seed", [None, 0, 1, 2, 3])  # odd seeds also prune convs
def test_view_equals_prepared_in_train_and_eval(plan_seed: int | None) -> None:
    rewritten = 0
    for name, model, x in _models():
        analysis = analyze(model.eval(), (x[:1],))
        if plan_seed is None:
            plan = merge_everything_plan(analysis)
        else:
            plan = random_plan(analysis, plan_seed, keep_prob=0.3, prune_prob=0.3 * (plan_seed % 2))
        prepared = prepare(model, plan, (x[:1],)).double()
        view, n = ring_view(prepared)
        rewritten += n
        params = list(prepared.parameters())
        for training in (True, False):
            prepared.train(training)
            state = copy.deepcopy(prepared.state_dict())
            want, want_grads = _outputs_and_grads(prepared, params, x.double())
            after = copy.deepcopy(prepared.state_dict())
            prepared.load_state_dict(state)
            got, got_grads = _outputs_and_grads(view, params, x.double())
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, msg=name)
            scale = max(w.abs().max().item() for w in want_grads)  # some are 0 up to rounding
            for g, w in zip(got_grads, want_grads, strict=True):
                torch.testing.assert_close(g, w, rtol=1e-7, atol=1e-10 * scale)
            for key, value in prepared.state_dict().items():  # BN running statistics
                torch.testing.assert_close(value, after[key], rtol=1e-9, atol=1e-12, msg=key)
    if plan_seed is None:
        assert rewritten > 0


def test_other_input_sizes_run_the_prepared_network() -> None:
    _, model, x = _models()[0]
    plan = merge_everything_plan(analyze(model.eval(), (x[:1],)))
    prepared = prepare(model, plan, (x[:1],)).double().eval()
    view, n = ring_view(prepared)
    assert n > 0
    calls = []
    view.graph_module.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        for shape in ((5, 3, 24, 24), (2, 3, 40, 36)):  # any batch; another size
            x = torch.randn(shape, dtype=torch.float64)
            torch.testing.assert_close(view(x), prepared(x), rtol=1e-10, atol=1e-10)
    assert calls == [1]  # the ring graph ran for the planned size only


def test_finetuned_through_the_view_converts_exactly() -> None:
    _, model, x = _models()[0]
    plan = merge_everything_plan(analyze(model.eval(), (x[:1],)))
    prepared = prepare(model, plan, (x[:1],))
    data = (torch.randn(64, 3, 24, 24), torch.randint(0, 5, (64,)))
    depthfx.finetune(prepared, data, steps=3, batch_size=16, lr=0.01, progress=False)
    assert prepared.depthfx_finetune["borders"] == "exact"
    assert prepared.depthfx_finetune["rewritten"] > 0
    merged = convert(prepared, plan, (x[:1],))
    with torch.no_grad():
        torch.testing.assert_close(merged(x), prepared(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_ring_batch_norm_equals_batch_norm_of_the_filled_map(seed: int, affine: bool) -> None:
    """Outputs, gradients (delta, constant, weight, bias) and running statistics of BN of a
    ring map equal those of BN of the whole map it stands for (float64, train mode), far
    from zero mean (the constants offset by 30) so that a cancelling formula would show."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    size = (rng.randint(3, 9), rng.randint(3, 9))
    x, box = _ring_map(rng, size, 6)
    x = x + 30.0
    (r0, r1), (c0, c1) = box
    ring = size[0] * size[1] - (r1 - r0) * (c1 - c0)
    outside = (r0, c0) != (0, 0)
    const = (x[:1, :, :1, :1] if outside else x[:1, :, -1:, -1:]).clone().requires_grad_()
    delta = (x[:, :, r0:r1, c0:c1] - const).detach().requires_grad_()
    whole = ((0, size[0]), (0, size[1]))
    bns = [nn.BatchNorm2d(6, affine=affine).double().train() for _ in range(2)]
    if affine:
        for p in bns[0].parameters():
            p.data.normal_()
        bns[1].load_state_dict(bns[0].state_dict())
    full = fill(delta, const, box, whole)  # differentiable in delta and const
    want = bns[0](full)
    out, out_const = RingBatchNorm(bns[1])(delta, const, ring)
    got = fill(out, out_const, box, whole)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    probe = torch.randn_like(want)
    inputs = [delta, const, *bns[0].parameters()]
    grads_want = torch.autograd.grad((want * probe).sum(), inputs[:2] + list(bns[0].parameters()))
    grads_got = torch.autograd.grad((got * probe).sum(), inputs[:2] + list(bns[1].parameters()))
    for g, w in zip(grads_got, grads_want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-9)
    for key, value in bns[1].state_dict().items():
        torch.testing.assert_close(value, bns[0].state_dict()[key], rtol=1e-10, atol=1e-12)
