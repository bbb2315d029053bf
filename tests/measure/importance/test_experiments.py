"""Per-entry experiments on the parallel executors: a pool of spawned processes and a local Ray
cluster on this machine's cores (2 workers, 1 torch thread each). The finetune table of a small
CNN on scikit-learn digits equals the serial one at 1 thread bit for bit; a worker that dies in
the middle of an entry is retried; an interrupted driver resumes with only the missing entries;
an entry that always fails is named and the others are cached."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from executor_helpers import CountCalls, DieOnce, FailOn, relus
from importance_helpers import X1, digits, trained_tiny

import depthfx.measure.importance.experiments as experiments
from depthfx.errors import DepthFXError
from depthfx.executors import JobsFailed
from depthfx.measure.importance import entries_of, entry_plan, measure_importance
from depthfx.passes.analyze import analyze
from depthfx.records import Analysis
from depthfx.solver import ImportanceTable

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: Two workers with one torch thread each, on either executor.
OPTIONS = {"processes": {"workers": 2, "threads": 1}, "ray": {"num_cpus": 1}}


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """One local Ray cluster (2 CPUs, no dashboard) for the module; shut down after it."""
    ray = pytest.importorskip("ray")
    from depthfx.executors.ray import connect

    started = connect(num_cpus=2)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(params=["processes", "ray"])
def executor(request: pytest.FixtureRequest) -> str:
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
    return request.param


@functools.cache
def _tiny() -> tuple[torch.nn.Module, Analysis]:
    model = trained_tiny()
    return model, analyze(model, X1, training=False)


def _finetune(executor: str = "serial", cache: Path | None = None) -> ImportanceTable:
    model, analysis = _tiny()
    x, y = digits()
    return measure_importance(
        model, X1, method="finetune", train_data=(x[:512], y[:512]),
        val_data=(x[1500:], y[1500:]), steps=3, batch_size=64, analysis=analysis, cache=cache,
        progress=False, executor=executor, executor_options=OPTIONS.get(executor),
    )  # fmt: skip


def _score(fn, executor: str = "serial", cache: Path | None = None) -> ImportanceTable:
    model, analysis = _tiny()
    return measure_importance(
        model, X1, method=fn, analysis=analysis, cache=cache, progress=False,
        executor=executor, executor_options=OPTIONS.get(executor),
    )  # fmt: skip


@functools.cache
def _serial_finetune() -> ImportanceTable:
    return _finetune()


@functools.cache
def _serial_relus() -> ImportanceTable:
    return _score(relus)


def _entry_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("entry-*.json"))


def test_finetune_table_equals_serial(executor: str, tmp_path: Path) -> None:
    serial = _serial_finetune()
    table = _finetune(executor, tmp_path)
    assert list(table.scores) == list(serial.scores)
    assert table.scores == serial.scores  # bit for bit
    assert table.meta["metrics"] == serial.meta["metrics"]
    assert len(_entry_files(tmp_path)) == len(serial.scores)


def test_dead_worker_is_retried(executor: str, tmp_path: Path) -> None:
    table = _score(DieOnce(tmp_path / "died"), executor, tmp_path / "cache")
    assert (tmp_path / "died").exists()  # a worker did die in the middle of an entry
    assert table.scores == _serial_relus().scores
    assert len(_entry_files(tmp_path / "cache")) == len(table.scores)


def test_interrupted_driver_resumes_the_missing_entries(
    executor: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    k, cache = 3, tmp_path / "cache"
    real = experiments.atomic_write
    written: list[str] = []

    def interrupt_after_k(path, data) -> None:
        real(path, data)
        if Path(path).name.startswith("entry-"):
            written.append(str(path))
            if len(written) == k:
                raise KeyboardInterrupt

    monkeypatch.setattr(experiments, "atomic_write", interrupt_after_k)
    (tmp_path / "first").mkdir()
    with pytest.raises(KeyboardInterrupt):
        _score(CountCalls(tmp_path / "first"), executor, cache)
    monkeypatch.undo()
    assert len(_entry_files(cache)) == k

    (tmp_path / "resumed").mkdir()
    table = _score(CountCalls(tmp_path / "resumed"), executor, cache)
    assert len(list((tmp_path / "resumed").iterdir())) == len(table.scores) - k
    assert table.scores == _serial_relus().scores


def test_failing_entry_is_named_and_the_others_are_cached(executor: str, tmp_path: Path) -> None:
    _, analysis = _tiny()
    keys = entries_of(analysis)
    plans = [entry_plan(analysis, key) for key in keys]
    bad = next(k for k, p in zip(keys, plans, strict=True) if plans.count(p) == 1)
    with pytest.raises(JobsFailed) as info:
        _score(FailOn(entry_plan(analysis, bad)), executor, tmp_path)
    message = str(info.value)
    assert f"{bad}: RuntimeError: injected failure" in message
    assert "run again with the same cache folder" in message and str(tmp_path) in message
    assert list(info.value.failures) == [bad]
    files = {p.name for p in _entry_files(tmp_path)}
    assert files == {f"entry-{'-'.join(map(str, k))}.json" for k in keys if k != bad}


def test_ray_puts_the_model_and_the_data_once(
    ray_cluster: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    real, put = ray.put, []

    def spy(value, **kwargs):
        put.append(type(value).__name__)
        return real(value, **kwargs)

    monkeypatch.setattr(ray, "put", spy)
    table = _score(relus, "ray", tmp_path)
    assert put == ["EntryShared"]  # one object for every task: model, experiment, data, base
    assert table.scores == _serial_relus().scores


def test_the_proxy_refuses_an_executor() -> None:
    model, analysis = _tiny()
    with pytest.raises(DepthFXError, match="per-entry methods only"):
        measure_importance(model, X1, analysis=analysis, executor="processes", progress=False)
