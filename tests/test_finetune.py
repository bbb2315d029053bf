"""depthfx.finetune: the paper's optimiser and schedule, KD mixing, checkpoint/resume."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from torch import nn

import depthfx
from depthfx.finetune import cosine_lr, evaluate, time_memory_formats

pytest.importorskip("sklearn")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data():
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16, torch.tensor(d.target)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
        nn.Linear(512, 10),
    )  # fmt: skip


def test_cosine_schedule_per_iteration() -> None:
    assert cosine_lr(0.1, 0, 10) == 0.1
    assert cosine_lr(0.1, 5, 10) == pytest.approx(0.05)
    assert cosine_lr(0.1, 9, 10) == pytest.approx(0.05 * (1 + math.cos(math.pi * 0.9)))


def test_sgd_nesterov_settings_and_learning(monkeypatch) -> None:
    seen = {}
    real = torch.optim.SGD

    def spy(params, **kw):
        seen.update(kw)
        return real(params, **kw)

    monkeypatch.setattr(torch.optim, "SGD", spy)
    x, y = _data()
    model = _model()
    before = evaluate(model, (x[1500:], y[1500:]))[1]
    out = depthfx.finetune(model, (x[:1500], y[:1500]), epochs=2, lr=0.05, batch_size=64,
                           progress=False)  # fmt: skip
    assert out is model and not model.training
    assert seen == {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-5, "nesterov": True}
    assert evaluate(model, (x[1500:], y[1500:]))[1] > max(before, 80.0)


def test_kd_weight_zero_and_one() -> None:
    x, y = _data()
    teacher = _model(seed=1).eval()
    plain = depthfx.finetune(_model(), (x[:256], y[:256]), steps=4, batch_size=64, progress=False)
    zero = depthfx.finetune(_model(), (x[:256], y[:256]), steps=4, batch_size=64,
                            distill_from=teacher, alpha_kd=0.0, progress=False)  # fmt: skip
    for a, b in zip(plain.parameters(), zero.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    # alpha 1: labels are ignored, only the teacher's soft labels matter
    one = depthfx.finetune(_model(), (x[:256], y[:256]), steps=4, batch_size=64,
                           distill_from=teacher, alpha_kd=1.0, progress=False)  # fmt: skip
    shuffled = depthfx.finetune(_model(), (x[:256], y[:256].flip(0)), steps=4, batch_size=64,
                                distill_from=teacher, alpha_kd=1.0, progress=False)  # fmt: skip
    for a, b in zip(one.parameters(), shuffled.parameters(), strict=True):
        torch.testing.assert_close(a, b)


class _Stop(Exception):
    pass


class _Interrupting(torch.utils.data.TensorDataset):
    """Raises on the n-th item fetched, like a job killed mid-epoch."""

    def __init__(self, x, y, after: int) -> None:
        super().__init__(x, y)
        self.left = after

    def __getitem__(self, i):
        self.left -= 1
        if self.left < 0:
            raise _Stop
        return super().__getitem__(i)


def test_checkpoint_resume_equals_uninterrupted(tmp_path) -> None:
    x, y = _data()
    x, y = x[:320], y[:320]
    ref = depthfx.finetune(_model(), (x, y), steps=6, batch_size=32, seed=5, progress=False)
    ckpt = tmp_path / "ft.pt"
    with pytest.raises(_Stop):
        depthfx.finetune(_model(), _Interrupting(x, y, after=32 * 4 + 3), steps=6, batch_size=32,
                         seed=5, checkpoint=ckpt, checkpoint_every=2, progress=False)  # fmt: skip
    assert torch.load(ckpt, weights_only=True)["step"] == 4
    resumed = depthfx.finetune(_model(), (x, y), steps=6, batch_size=32, seed=5, checkpoint=ckpt,
                               checkpoint_every=2, progress=False)  # fmt: skip
    for a, b in zip(ref.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_channels_last_is_used_for_conv_nets_and_undone() -> None:
    x, y = _data()
    model = _model()
    depthfx.finetune(model, (x[:256], y[:256]), steps=2, batch_size=64, progress=False)
    assert model.depthfx_finetune["memory_format"] == "channels_last"
    assert model[0].weight.is_contiguous()
    same = _model()
    depthfx.finetune(same, (x[:256], y[:256]), steps=2, batch_size=64, progress=False,
                     channels_last=False)  # fmt: skip
    assert same.depthfx_finetune["memory_format"] == "contiguous"
    for a, b in zip(model.parameters(), same.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("exact_view", [False, True])
def test_timing_the_formats_leaves_the_network_and_rng_as_they_were(exact_view: bool) -> None:
    """Also through the ring view, whose BN updates the prepared network's buffers."""
    from depthfx.finetune import training_view

    x, y = _data()
    if exact_view:
        model = _prepared_digits_net()[0]
        net, rewritten = training_view(model, "exact")
        assert rewritten > 0
    else:
        model = net = nn.Sequential(_model(), nn.Dropout(0.5))
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    conv.weight.grad = torch.ones_like(conv.weight)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grad = conv.weight.grad
    rng = torch.random.get_rng_state()
    ms = time_memory_formats(model.eval(), net, x[:64], y[:64])
    assert set(ms) == {"contiguous", "channels_last"} and min(ms.values()) > 0
    assert not model.training
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert conv.weight.grad is grad and conv.bias.grad is None
    assert conv.weight.is_contiguous()
    for key, value in model.state_dict().items():  # BN running statistics, batches tracked
        assert torch.equal(value, before[key]), key


def test_finetune_says_which_memory_format_it_used_and_why(monkeypatch, caplog) -> None:
    """Long runs time both formats (a lowered threshold here) and train in the faster one, as
    a run told that format trains; short runs follow the rule; an argument is obeyed."""
    x, y = _data()
    data = (x[:256], y[:256])
    module = importlib.import_module("depthfx.finetune")  # depthfx.finetune is the function
    monkeypatch.setattr(module, "MEASURE_FORMATS_FROM", 3)
    with caplog.at_level("INFO", logger="depthfx.finetune"):
        timed = depthfx.finetune(_model(), data, steps=3, batch_size=64, progress=False)
    record = timed.depthfx_finetune
    assert record["memory_format_by"] == "measured"
    ms = record["memory_format_ms"]
    assert set(ms) == {"contiguous", "channels_last"}
    assert record["memory_format"] == min(ms, key=lambda k: (ms[k], k != "channels_last"))
    assert f"memory format {record['memory_format']} (measured): contiguous" in caplog.text
    told = depthfx.finetune(_model(), data, steps=3, batch_size=64, progress=False,
                            channels_last=record["memory_format"] == "channels_last")  # fmt: skip
    assert told.depthfx_finetune["memory_format_by"] == "argument"
    for a, b in zip(timed.state_dict().values(), told.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # the timing trained nothing
    short = depthfx.finetune(_model(), data, steps=2, batch_size=64, progress=False)
    assert short.depthfx_finetune["memory_format_by"] == "rule"
    assert short.depthfx_finetune["memory_format"] == "channels_last"
    assert short.depthfx_finetune["memory_format_ms"] is None


def _prepared_digits_net() -> tuple[nn.Module, torch.Tensor]:
    """A prepared 8×8 conv net whose one merge group (4 convs) pads its input by 4."""
    from depthfx.passes.analyze import analyze
    from depthfx.testing import merge_everything_plan

    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for cin in (1, 8, 8, 8):
        layers += [nn.Conv2d(cin, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(512, 10)).eval()
    x = torch.zeros(1, 1, 8, 8)
    return depthfx.prepare(model, merge_everything_plan(analyze(model, (x,))), (x,)), x


@pytest.mark.parametrize("channels_last", [False, True])
def test_exact_borders_train_like_the_full_prepared_network(channels_last: bool) -> None:
    """borders="exact" (the default) trains the prepared network to the same weights and BN
    statistics as training it as is; it rewrote convs, so the test compares two code paths.
    In float64: in fp32 the two trajectories drift apart by rounding as fast as those of the
    prepared network in the two memory formats do."""
    x, y = _data()
    nets = {}
    for borders in ("full", "exact"):
        nets[borders] = _prepared_digits_net()[0].double()
        depthfx.finetune(nets[borders], (x[:192].double(), y[:192]), steps=4, batch_size=64,
                         lr=0.05, borders=borders, channels_last=channels_last,
                         progress=False)  # fmt: skip
    assert nets["exact"].depthfx_finetune["borders"] == "exact"
    assert nets["exact"].depthfx_finetune["rewritten"] == 2  # convs 1, 2 read a ring (3, 4 none)
    assert nets["full"].depthfx_finetune["rewritten"] == 0
    full, exact = nets["full"].state_dict(), nets["exact"].state_dict()
    assert any(
        not torch.equal(v, _prepared_digits_net()[0].state_dict()[k]) for k, v in full.items()
    )
    for key, value in full.items():
        torch.testing.assert_close(exact[key], value, rtol=1e-9, atol=1e-12, msg=key)
