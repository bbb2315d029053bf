"""The paper's fine-tuning protocol on a tiny CNN and scikit-learn digits: runs, caches,
resumes after an interruption and shards, with results independent of how it was split."""

from __future__ import annotations

import json

import pytest
import torch
from importance_helpers import digits
from torch import nn

import depthfx.measure.importance.finetune as finetune_method
from depthfx.measure.importance import entries_of, entry_plan, measure_importance
from depthfx.measure.importance.finetune import reinit_conv
from depthfx.passes.analyze import analyze
from depthfx.passes.prepare import prepare

X1 = torch.zeros(1, 1, 8, 8)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Flatten(), nn.Linear(256, 10),
    ).eval()  # fmt: skip


def _run(model: nn.Module, cache, **kw):
    x, y = digits()
    return measure_importance(
        model, X1, method="finetune", train_data=(x[:256], y[:256]), val_data=(x[1500:], y[1500:]),
        steps=2, batch_size=64, cache=cache, progress=False, **kw,
    )  # fmt: skip


def test_finetune_runs_caches_resumes_and_shards(tmp_path, monkeypatch) -> None:
    model = _model()
    keys = entries_of(analyze(model, X1, training=False))
    full = _run(model, tmp_path / "full")
    assert list(full.scores) == keys and full.score == "val_acc" and full.norm == "single"
    assert len(list((tmp_path / "full").glob("entry-*.json"))) == len(keys)
    # val_acc is a difference of top-1 in percentage points on 297 held-out images
    assert all(abs(v * 297 / 100 - round(v * 297 / 100)) < 1e-6 for v in full.scores.values())

    calls = []
    real = finetune_method.finetune

    def interrupted(*args, **kwargs):
        if len(calls) == 1:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(finetune_method, "finetune", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(model, tmp_path / "resumed")
    assert len(list((tmp_path / "resumed").glob("entry-*.json"))) == 1
    monkeypatch.setattr(finetune_method, "finetune", real)
    resumed = _run(model, tmp_path / "resumed")
    assert resumed.scores == full.scores

    for k in range(2):
        part = _run(model, tmp_path / "sharded", shard=(k, 2))
        assert list(part.scores) == keys[k::2]
    merged = _run(model, tmp_path / "sharded")
    assert merged.scores == full.scores

    settings = json.loads((tmp_path / "full" / "settings.json").read_text())
    assert settings["lr"] == 0.1 and settings["steps"] == 2
    with pytest.raises(Exception, match="other settings"):
        measure_importance(
            model, X1, method="finetune", train_data=(digits()[0][:64], digits()[1][:64]),
            val_data=(digits()[0][:64], digits()[1][:64]), steps=3, cache=tmp_path / "full",
            progress=False,
        )  # fmt: skip


def test_reinit_resets_conv_and_bn() -> None:

    model = _model()
    with torch.no_grad():
        model[1].running_mean.fill_(3.0)
    analysis = analyze(model, X1, training=False)
    net = prepare(model, entry_plan(analysis, (0, 1, 2, 1, 1)))
    before = net.get_submodule("3").weight.clone()
    reinit_conv(net, analysis.chains[0], 1)
    assert torch.equal(net.get_submodule("1").running_mean, torch.zeros(4))
    assert torch.equal(net.get_submodule("3").weight, before)  # conv 2 untouched
    assert not torch.equal(net.get_submodule("0").weight, model[0].weight)
