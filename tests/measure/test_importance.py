"""Proxy and callable importance tables: coverage, exactness against prepare(), zeros, signs,
determinism, file formats and the CLI."""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch
import torch.nn.functional as F
from importance_helpers import Tiny, digits, trained_tiny

import depthfx
from depthfx.measure.importance import (
    build_network,
    entries_of,
    entry_plan,
    measure_importance,
    write_raw_csv,
)
from depthfx.passes.analyze import analyze
from depthfx.passes.prepare import prepare
from depthfx.solver import ImportanceTable

X1 = torch.zeros(1, 1, 8, 8)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@functools.cache
def _setup(estimate: str = "exact") -> tuple[Tiny, object, object]:
    model = trained_tiny()
    analysis = analyze(model, X1, training=False)
    x, y = digits()
    calib = list(zip(x[1400:1528].split(32), y[1400:1528].split(32), strict=True))
    table = measure_importance(
        model, X1, calib, analysis=analysis, score="kl", estimate=estimate, progress=False
    )
    return model, analysis, table


def _new_acts(analysis, key) -> set[int]:
    """Spec §3.2: new_A = (default minus the block's interior) plus the flagged ends."""
    _, st, end, sa, ea = key
    acts = set(analysis.chains[key[0]].default_acts)
    new = {p for p in acts if not st < p < end} | ({st} if sa else set()) | ({end} if ea else set())
    return new - {0}


def _unchanged(analysis, key) -> bool:
    return _new_acts(analysis, key) == set(analysis.chains[key[0]].default_acts)


def test_two_chains_and_every_extended_block_covered() -> None:
    _, analysis, table = _setup()
    assert [c.num_convs for c in analysis.chains] == [4, 1]
    expected = [(c.index, *b) for c in analysis.chains for b in c.extended_blocks()]
    assert list(table.scores) == expected
    # position 2 is linear in the original: both flags are measured there
    assert (0, 2, 3, 0, 1) in table.scores and (0, 1, 2, 1, 0) in table.scores
    assert table.norm == "none" and table.score == "neg_kl"


def test_entry_network_is_the_prepared_network() -> None:
    model, analysis, _ = _setup()
    x = digits()[0][:16]
    for key in entries_of(analysis):
        plan = entry_plan(analysis, key)
        with torch.no_grad():
            want = prepare(model, plan, (X1,)).eval()(x)
            got = build_network(analysis, plan)(x)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # padding moved: merging convs 1..3 pads the group input by 3 and the convs by 0
    net = build_network(analysis, entry_plan(analysis, (0, 0, 3, 1, 1)))
    assert [net.get_submodule(n).padding for n in ("c1", "c2", "c3")] == [(0, 0)] * 3


def test_proxy_scores_equal_an_independent_computation() -> None:
    """The cached, prefix-split evaluation gives the same KL as full prepare() networks."""
    model, analysis, table = _setup()
    x = digits()[0][1400:1528]
    with torch.no_grad():
        ref = F.log_softmax(prepare(model, entry_plan(analysis, None), (X1,)).eval()(x).double(), 1)
        for key in [(0, 0, 3, 1, 1), (0, 1, 4, 1, 1), (0, 2, 3, 0, 1), (1, 0, 1, 1, 1)]:
            out = prepare(model, entry_plan(analysis, key), (X1,)).eval()(x).double()
            kl = float((ref.exp() * (ref - F.log_softmax(out, 1))).sum(1).mean())
            assert table.scores[key] == pytest.approx(-kl, rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("estimate", ["exact", "fisher"])
def test_unchanged_entries_score_exactly_zero_and_removals_negative(estimate: str) -> None:
    _, analysis, table = _setup(estimate)
    zeros = [k for k in table.scores if _unchanged(analysis, k)]
    # single-conv blocks with the original flags, and (1, 3): merging a linear pair
    assert {(0, 0, 1, 1, 1), (0, 1, 2, 1, 0), (0, 2, 3, 0, 1), (0, 1, 3, 1, 1)} <= set(zeros)
    assert all(table.scores[k] == 0.0 for k in zeros)
    changed = [k for k in table.scores if not _unchanged(analysis, k)]
    assert changed and all(table.scores[k] < 0 for k in changed)


def test_accuracy_score_in_percentage_points() -> None:
    model, analysis, _ = _setup()
    x, y = digits()
    calib = [(x[1400:1500], y[1400:1500])]
    table = measure_importance(
        model, X1, calib, analysis=analysis, estimate="exact", progress=False
    )
    assert table.score == "val_acc"
    assert table.meta["columns"] == ["val_acc", "neg_kl", "neg_rel_mse"]
    with torch.no_grad():
        base = prepare(model, entry_plan(analysis, None), (X1,)).eval()(x[1400:1500])
        out = prepare(model, entry_plan(analysis, (0, 0, 4, 1, 1)), (X1,)).eval()(x[1400:1500])
    delta = float((out.argmax(1) == y[1400:1500]).sum() - (base.argmax(1) == y[1400:1500]).sum())
    assert table.scores[(0, 0, 4, 1, 1)] == pytest.approx(delta)  # 100 images: 1 image = 1 pp


def test_random_inputs_warn_and_are_deterministic() -> None:
    model, analysis, _ = _setup()
    with pytest.warns(UserWarning, match="random inputs"):
        a = measure_importance(model, X1, analysis=analysis, seed=3, progress=False)
    with pytest.warns(UserWarning, match="random inputs"):
        b = measure_importance(model, X1, analysis=analysis, seed=3, progress=False)
    with pytest.warns(UserWarning, match="random inputs"):
        c = measure_importance(model, X1, analysis=analysis, seed=4, progress=False)
    assert a.scores == b.scores
    assert a.scores != c.scores
    assert a.meta["fingerprint"]["random_inputs"] is True


def test_mse_for_non_classifiers() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3)
    ).eval()
    x = torch.randn(1, 3, 10, 10)
    table = measure_importance(model, x, [torch.randn(8, 3, 10, 10)], progress=False)
    assert table.score == "neg_rel_mse"
    with torch.no_grad():
        a = analyze(model, x, training=False)
        ref = model(torch.randn(0, 3, 10, 10))  # shape only
    assert ref.shape[1] == 4 and len(a.chains) == 1
    merged = next(k for k in table.scores if k[1:3] == (0, 2))
    assert table.scores[merged] < 0 and table.scores[(0, 0, 1, 1, 1)] == 0.0


def test_callable_method_and_round_trips(tmp_path) -> None:
    model, analysis, table = _setup()

    def relus(gm: torch.fx.GraphModule) -> float:
        return float(
            sum(
                n.target is torch.relu
                or (n.op == "call_module" and isinstance(gm.get_submodule(n.target), torch.nn.ReLU))
                for n in gm.graph.nodes
            )
        )

    counted = measure_importance(model, X1, method=relus, analysis=analysis, progress=False)
    for key, value in counted.scores.items():
        others = sum(len(c.default_acts) for c in analysis.chains if c.index != key[0])
        assert value == len(_new_acts(analysis, key)) + others, key
    # paper CSV out and in; JSON out and in; I_ext CSV
    write_raw_csv(table, tmp_path / "importance.csv")
    back = ImportanceTable.read_csv(tmp_path / "importance.csv", score="neg_kl", norm="none")
    assert back.scores == table.scores
    assert (tmp_path / "importance.csv").read_text().startswith(",id,chain,st,end,st_act,")
    table.write_json(tmp_path / "imp.json")
    again = ImportanceTable.read_json(tmp_path / "imp.json")
    assert again.scores == table.scores and again.norm == "none"
    table.extended().write_csv(tmp_path / "ext.csv")
    assert len((tmp_path / "ext.csv").read_text().splitlines()) == len(table.scores) + 1


def test_measure_classmethod_and_solver(tmp_path) -> None:
    model, analysis, table = _setup()
    same = depthfx.solver.ImportanceTable.measure(
        model, X1, [digits()[0][1400:1528]], analysis=analysis, score="kl", estimate="exact",
        progress=False,
    )  # fmt: skip
    assert same.scores == table.scores
    assert not math.isnan(sum(table.extended().values.values()))


def test_cli(tmp_path, monkeypatch, capsys) -> None:
    import depthfx.cli
    import depthfx.commands.table

    monkeypatch.setattr(depthfx.commands.table, "KINDS", ("importance",))
    monkeypatch.setattr(depthfx.cli, "COMMANDS", ("table",))
    model = trained_tiny(steps=5)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    (tmp_path / "m.py").write_text(
        "from importance_helpers import Tiny\n\ndef make():\n    return Tiny()\n"
    )
    x, y = digits()
    torch.save({"x": x[:40], "y": y[:40]}, tmp_path / "calib.pt")
    out = tmp_path / "imp.json"
    argv = ["table", "importance", f"{tmp_path / 'm.py'}:make", "--weights", str(tmp_path / "w.pt"),
            "--data", str(tmp_path / "calib.pt"), "--estimate", "exact", "-o", str(out),
            "--ext-csv", str(tmp_path / "ext.csv")]  # fmt: skip
    assert depthfx.cli.main(argv) == 0
    table = ImportanceTable.read_json(out)
    assert table.score == "val_acc" and table.meta["fingerprint"]["images"] == 40
    assert len(table.scores) == len(entries_of(analyze(model, X1, training=False)))
    assert "entries" in capsys.readouterr().out
    bad = [
        "table",
        "importance",
        f"{tmp_path / 'm.py'}:make",
        "--data",
        "nope-data",
        "-o",
        str(out),
    ]
    assert depthfx.cli.main(bad) == 2
    assert "unknown dataset" in capsys.readouterr().err


# ----------------------------------------------------------------------------- fisher estimate


def _run_with(base: torch.fx.GraphModule, overrides: dict[str, torch.Tensor], x: torch.Tensor):
    """The base network with some node values replaced (the entry's frontier values)."""

    class Override(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node):
            return overrides[n.name] if n.name in overrides else super().run_node(n)

    return Override(base).run(x)


@pytest.mark.parametrize("model_name", ["tiny", "residual"])
def test_fisher_regions_recompose_every_entry_network(model_name: str) -> None:
    """Prefix values of the base → the entry's region → the base's suffix is the entry network:
    the split the second-order estimate relies on is exact, for every extended block."""
    from depthfx.measure.fisher import RegionFinder, with_values
    from depthfx.testing import TinyResidual

    if model_name == "tiny":
        model, x_example, x = trained_tiny(), X1, digits()[0][:16]
    else:
        torch.manual_seed(0)
        model, x_example = TinyResidual().eval(), torch.zeros(1, 3, 16, 16)
        x = torch.randn(4, 3, 16, 16)
    analysis = analyze(model, x_example, training=False)
    base = build_network(analysis, entry_plan(analysis, None))
    find_region = RegionFinder(base, {n.name for n in analysis.graph_module.graph.nodes})
    regions = 0
    for key in entries_of(analysis):
        entry = build_network(analysis, entry_plan(analysis, key))
        region = find_region(entry)
        with torch.no_grad():
            want = entry(x)
            if region.module is None:
                torch.testing.assert_close(base(x), want, rtol=0, atol=0)
                continue
            regions += 1
            _, found = with_values(base, region.inputs)(x)
            result = region.module(*found)
            if region.exact:
                torch.testing.assert_close(result[0], want, rtol=1e-5, atol=1e-6)
            else:
                got = _run_with(base, dict(zip(region.outputs, result, strict=True)), x)
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
                # the region is smaller than the rest of the network
                assert len(region.module.graph.nodes) < len(entry.graph.nodes)
    assert regions >= 2


def test_fisher_estimate_is_the_kl_to_second_order() -> None:
    """For a small change δ at a frontier feeding a softmax through a linear map, ½ δᵀ𝓕δ with
    sampled labels matches the exact KL (within sampling error), and both shrink as δ²."""
    from depthfx.measure.fisher import FisherScores

    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(5, 8, generator=gen, dtype=torch.float64)
    h = torch.randn(64, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    direction = torch.randn(64, 8, generator=gen, dtype=torch.float64)
    logits = h @ weight.T
    scores = FisherScores(["a", "b"], classifier=True)
    grads = scores.gradients([logits], [h], 4000, gen)
    scores.add_reference([logits.detach()])
    for key, eps in (("a", 1e-2), ("b", 2e-2)):
        scores.add(key, [eps * direction], grads)
    log_p = F.log_softmax(logits.detach(), 1)
    for key, eps in (("a", 1e-2), ("b", 2e-2)):
        log_q = F.log_softmax((h.detach() + eps * direction) @ weight.T, 1)
        kl = float((log_p.exp() * (log_p - log_q)).sum(1).mean())
        assert scores.score(key) == pytest.approx(-kl, rel=0.1)
    assert scores.score("b") / scores.score("a") == pytest.approx(4.0, rel=1e-9)


@pytest.mark.parametrize("value_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("delta_format", [torch.contiguous_format, torch.channels_last])
def test_gradient_draws_dot_any_layout(value_format, delta_format) -> None:
    """Draws · δ is Σ_chw g·δ per image and draw, whatever the memory formats of the value
    (which fixes the draws' row order) and of δ."""
    from depthfx.measure.fisher import Draws

    gen = torch.Generator().manual_seed(0)
    value = torch.randn(3, 4, 5, 6, generator=gen).to(memory_format=value_format)
    grads = [torch.randn(3, 4, 5, 6, generator=gen) for _ in range(2)]
    delta = torch.randn(3, 4, 5, 6, generator=gen).to(memory_format=delta_format)
    draws = Draws.empty_like(value, 2)
    draws.set(0, grads[0].to(memory_format=delta_format))
    draws.set(1, None)  # an unused value: zero gradient
    want = torch.stack([(grads[0] * delta).sum((1, 2, 3)), torch.zeros(3)], 1)
    torch.testing.assert_close(draws.dot(delta), want, rtol=1e-5, atol=1e-5)


def _average_ranks(values: list[float]) -> torch.Tensor:
    """Ranks with ties sharing their mean rank (two entries here build the same network)."""
    v = torch.tensor(values, dtype=torch.float64)
    below = (v.unsqueeze(1) > v.unsqueeze(0)).sum(1).double()
    equal = (v.unsqueeze(1) == v.unsqueeze(0)).sum(1).double()
    return below + (equal - 1) / 2


def test_fisher_ranks_like_the_exact_proxy_on_a_trained_model() -> None:
    """Removing activations of a trained model changes its outputs by KLs of 2–19 nats here,
    far from small, so the second-order estimate is off by up to 2×; it must still keep the
    sign, the scale and the ranking (at most one swap of the five entries: ρ ≈ 0.68)."""
    _, _, exact = _setup("exact")
    _, _, fisher = _setup("fisher")
    keys = [k for k in exact.scores if exact.scores[k] != 0]
    assert len(keys) == 5
    assert fisher.meta["fingerprint"]["estimate"] == "fisher"
    for k in keys:
        assert 0.25 < fisher.scores[k] / exact.scores[k] < 4.0, (k, exact.scores[k])
    assert min(keys, key=exact.scores.get) == min(keys, key=fisher.scores.get)
    a = _average_ranks([exact.scores[k] for k in keys])
    b = _average_ranks([fisher.scores[k] for k in keys])
    rho = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    assert rho > 0.6, rho


def test_fisher_proxy_resumes_after_an_interruption_bit_for_bit(tmp_path, monkeypatch) -> None:
    """Interrupted in its third batch, the proxy keeps two batches' sums in the cache; the next
    run measures only the other two and ends with the uninterrupted scores exactly; a finished
    table is read back without running a batch; other settings start afresh."""
    from depthfx.measure.fisher import FisherScores

    model = trained_tiny()
    analysis = analyze(model, X1, training=False)
    x, y = digits()
    calib = list(zip(x[1400:1528].split(32), y[1400:1528].split(32), strict=True))

    def run(**opts) -> ImportanceTable:
        return measure_importance(
            model, X1, calib, analysis=analysis, score="kl", batch_size=32, progress=False, **opts
        )

    full = run()
    real_add = FisherScores.add_reference
    batches_run = []

    def counting(self, outputs) -> None:
        if stop_at is not None and len(batches_run) == stop_at:
            raise KeyboardInterrupt
        batches_run.append(1)
        real_add(self, outputs)

    monkeypatch.setattr(FisherScores, "add_reference", counting)
    stop_at = 2
    with pytest.raises(KeyboardInterrupt):
        run(cache=tmp_path)
    (saved,) = tmp_path.glob("proxy-*.json")
    assert json.loads(saved.read_text())["state"]["batches"] == 2

    stop_at = None
    batches_run.clear()
    resumed = run(cache=tmp_path)
    assert len(batches_run) == 2
    assert resumed.scores == full.scores  # floats saved exactly, the label draws continued

    batches_run.clear()
    assert run(cache=tmp_path).scores == full.scores
    assert batches_run == []

    run(cache=tmp_path, seed=1)
    assert len(batches_run) == 4
    assert len(list(tmp_path.glob("proxy-*.json"))) == 2


def test_accuracy_score_needs_the_exact_estimate() -> None:
    model, analysis, _ = _setup()
    x, y = digits()
    with pytest.raises(depthfx.errors.DepthFXError, match="estimate='exact'"):
        measure_importance(
            model, X1, [(x[:32], y[:32])], analysis=analysis, score="accuracy", progress=False
        )
