"""Model sweep: every CNN either analyses into chains or raises CaptureError with a reason.

The default run checks a handful of models in detail; ``-m slow`` sweeps the whole list of
benchmarks/coverage.py (the table in docs/coverage.md).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest
import torch

import depthfx
import depthfx.cli
from depthfx.models import load_model

ROOT = Path(__file__).resolve().parents[1]


def _coverage_module() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(
        "coverage_bench", ROOT / "benchmarks" / "coverage.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


coverage = _coverage_module()


def test_resnet18() -> None:
    a = depthfx.analyze(load_model("torchvision:resnet18"), torch.randn(1, 3, 64, 64))
    assert [c.num_convs for c in a.chains] == [1, 16]
    assert [r.kind for r in a.chains[1].residuals].count("projection") == 3
    assert a.chains[1].valid_blocks()[:3] == [(0, 1), (0, 2), (0, 4)]  # (0, 3) cuts residual 2->4


def test_timm_tf_efficientnet_lite0_dynamic_same_padding() -> None:
    a = depthfx.analyze(load_model("timm:tf_efficientnet_lite0"), torch.randn(1, 3, 64, 64))
    (chain,) = a.chains
    assert chain.num_convs == 49 and len(chain.residuals) == 9
    assert {s.op for s in chain.activations.values()} == {"relu6"}
    stem = chain.conv(1)
    # 64x64, k3 s2, TF same: total pad 1 -> (0, 1) on each axis
    assert stem.conv_kind == "conv2d_same" and stem.padding == (0, 1, 0, 1)
    assert chain.conv(1).bn_kind == "norm_act" and chain.activations[1].kind == "norm_act"


def test_timm_resnet18d_avg_down_shortcuts_end_chains() -> None:
    a = depthfx.analyze(load_model("timm:resnet18d"), torch.randn(1, 3, 64, 64))
    assert a.chains[0].num_convs == 3  # deep stem
    assert max(c.num_convs for c in a.chains) == 4
    assert sum(len(c.residuals) for c in a.chains) == 5  # identity adds; avg-pool shortcuts end


def test_inspect_cli_writes_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(depthfx.cli, "COMMANDS", ("inspect",))  # isolate from other commands
    out = tmp_path / "out.json"
    argv = ["inspect", "torchvision:mobilenet_v2", "--input-shape", "1,3,64,64", "--json", str(out)]
    assert depthfx.cli.main(argv) == 0
    data = json.loads(out.read_text())
    (chain,) = data["chains"]
    assert chain["num_convs"] == 52 and len(chain["residuals"]) == 10
    assert len(chain["activations"]) == 35 and chain["valid_blocks"] == 578
    assert chain["convs"][0] == {
        **chain["convs"][0],
        "name": "features.0.0", "kernel": [3, 3], "stride": [2, 2], "groups": 1, "in": 3, "out": 32,
    }  # fmt: skip
    assert {"src": 6, "dst": 9, "kind": "identity"} in chain["residuals"]  # stem included
    assert "features.18.0" in capsys.readouterr().out
    argv = [*argv[:-1], str(tmp_path / "paper.json"), "--strided", "paper"]
    argv += ["--exclude", "features.0.0", "--exclude", "features.18.0"]
    assert depthfx.cli.main(argv) == 0
    (paper,) = json.loads((tmp_path / "paper.json").read_text())["chains"]
    assert (paper["num_convs"], paper["valid_blocks"], paper["extended_blocks"]) == (50, 171, 315)


@pytest.mark.parametrize("spec", ["torchvision:nope", "nope", "missing.py:make", "timm:nope"])
def test_inspect_cli_bad_spec(
    spec: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(depthfx.cli, "COMMANDS", ("inspect",))
    assert depthfx.cli.main(["inspect", spec]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("depthfx: error:") and "\n" not in err


def test_load_model_from_file_with_weights(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text(
        "import torch\ndef make():\n    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))\n"
    )
    model = load_model(f"{tmp_path / 'm.py'}:make")
    torch.save(model.state_dict(), tmp_path / "w.pt")
    again = load_model(f"{tmp_path / 'm.py'}:make", str(tmp_path / "w.pt"))
    torch.testing.assert_close(again[0].weight, model[0].weight)
    torch.save({"bad": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(depthfx.DepthFXError, match="do not fit"):
        load_model(f"{tmp_path / 'm.py'}:make", str(tmp_path / "bad.pt"))


@pytest.mark.slow
@pytest.mark.parametrize(("spec", "size"), coverage.MODELS, ids=[s for s, _ in coverage.MODELS])
def test_sweep(spec: str, size: int) -> None:
    row = coverage.analyse(spec, size)
    if row.result == "ok":
        assert row.chains >= 1 and row.convs >= 1
    else:
        assert row.result.startswith("CaptureError: cannot trace") or "shape" in row.result
