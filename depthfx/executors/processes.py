"""Several processes on this machine, no Ray: a pool of spawned workers, one per CPU slot (each
with ``threads`` torch threads) or one per GPU (each sees only its own GPU).

Spawned, not forked, so that workers start clean (no OpenMP pool or CUDA context copied from
the driver). The shared object is pickled once in the driver and unpickled once per worker (the
pool's initializer), not once per job. At most one job per worker is in flight, so when a worker
dies (``BrokenProcessPool``) the jobs still outstanding are the ones that were running: each is
charged one attempt and runs again in a fresh pool, up to ``max_retries`` times, while every
result that arrived before was already handed back. An exception raised by a job is a failure
at once unless ``retry_exceptions`` (a deterministic error would only fail again).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
from collections import Counter, deque
from collections.abc import Hashable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from depthfx.errors import DepthFXError
from depthfx.executors.base import Executor, Job, JobsFailed, OnResult, register_executor

#: The worker's state, set by its initializer: the shared object, its device, a setup error.
_WORKER: dict[str, Any] = {}


def _start_worker(payload: bytes, threads: int, gpus: Any) -> None:
    try:
        if gpus is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus.get())
            _WORKER["device"] = "cuda"
        import torch

        torch.set_num_threads(threads)
        _WORKER["shared"] = pickle.loads(payload)
    except Exception as err:  # reported by every job of this worker, as a job error
        _WORKER["error"] = f"worker setup failed: {type(err).__name__}: {err}"


def _call(job: Job, item: Any) -> Any:
    if "error" in _WORKER:
        raise DepthFXError(_WORKER["error"])
    return job(_WORKER["shared"], item, _WORKER.get("device"))


@dataclass
class _Jobs:
    """The jobs still to run, their failed attempts, and the jobs that failed for good."""

    todo: dict[Hashable, Any]
    max_retries: int
    attempts: Counter[Hashable] = field(default_factory=Counter)
    failures: dict[Hashable, str] = field(default_factory=dict)

    def failed(self, key: Hashable, why: str, retry: bool) -> bool:
        """Charge ``key`` one attempt; True when it is to run again."""
        self.attempts[key] += 1
        if retry and self.attempts[key] <= self.max_retries:
            return True
        self.failures[key] = f"{why} (attempt {self.attempts[key]})"
        del self.todo[key]
        return False


@register_executor("processes")
@dataclass
class ProcessesExecutor(Executor):
    """``workers``: processes (default: one per GPU with ``gpus``, else cores // ``threads``);
    ``threads``: torch threads per worker (default cores // workers); ``gpus``: one worker per
    visible GPU, its jobs get ``device="cuda"``; ``max_retries``: runs after a worker death."""

    workers: int | None = None
    threads: int | None = None
    gpus: bool = False
    max_retries: int = 2
    retry_exceptions: bool = False

    def run(
        self, job: Job, items: Mapping[Hashable, Any], shared: Any, on_result: OnResult
    ) -> None:
        try:
            payload = pickle.dumps(shared)
        except Exception as err:
            raise DepthFXError(
                f"executor 'processes' sends the model, the data and the method to its workers "
                f"with pickle, which failed ({type(err).__name__}: {err}); define the method at "
                "module level, or use executor='ray' (cloudpickle)"
            ) from err
        gpu_ids = _gpu_ids() if self.gpus else []
        cores = os.cpu_count() or 1
        workers = self.workers or len(gpu_ids) or max(1, cores // (self.threads or 1))
        if gpu_ids:
            workers = min(workers, len(gpu_ids))
        threads = self.threads or max(1, cores // workers)
        jobs = _Jobs(dict(items), self.max_retries)
        while jobs.todo:
            self._round(job, jobs, payload, workers, threads, gpu_ids, on_result)
        if jobs.failures:
            raise JobsFailed(jobs.failures)

    def _round(
        self,
        job: Job,
        jobs: _Jobs,
        payload: bytes,
        workers: int,
        threads: int,
        gpu_ids: list[str],
        on_result: OnResult,
    ) -> None:
        """Run the jobs in one fresh pool until they are done or a worker dies."""
        ctx = multiprocessing.get_context("spawn")
        gpus = None
        if gpu_ids:
            gpus = ctx.Queue()
            for gpu in gpu_ids[:workers]:
                gpus.put(gpu)
        queue = deque(jobs.todo)
        pending: dict[Future[Any], Hashable] = {}
        pool = ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=_start_worker, initargs=(payload, threads, gpus)
        )
        try:
            while queue or pending:
                while queue and len(pending) < workers:
                    try:
                        fut = pool.submit(_call, job, jobs.todo[queue[0]])
                    except BrokenProcessPool:  # a worker died: its jobs report it below
                        if not pending:
                            raise DepthFXError(
                                "executor 'processes': its worker processes die before running "
                                "any job (see their output above)"
                            ) from None
                        break
                    pending[fut] = queue.popleft()
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                broken = any(isinstance(f.exception(), BrokenProcessPool) for f in done)
                if broken:
                    wait(pending)  # the pool marks every outstanding job broken
                    done = set(pending)
                for fut in done:
                    key = pending.pop(fut)
                    err = fut.exception()
                    if isinstance(err, BrokenProcessPool):
                        jobs.failed(key, "its worker died", retry=True)
                    elif err is not None:
                        why = f"{type(err).__name__}: {err}"
                        if jobs.failed(key, why, retry=self.retry_exceptions):
                            queue.append(key)
                    else:
                        on_result(key, fut.result())
                        del jobs.todo[key]
                if broken:
                    break
        except BaseException:  # an interrupted driver does not wait for running jobs
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()  # idle or dead workers: joined, so none outlives the run


def _gpu_ids() -> list[str]:
    """The GPUs this process may use (its CUDA_VISIBLE_DEVICES, or every GPU torch sees)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return [v.strip() for v in visible.split(",") if v.strip()]
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        raise DepthFXError("executor 'processes' with gpus=True: no CUDA GPU is visible")
    return [str(i) for i in range(count)]


__all__ = ["ProcessesExecutor"]
