"""Run independent tasks in parallel and hand back results as they finish.

All parallel work in ipmix goes through here so the backend (threads of this process, local
processes through joblib's loky, a dask cluster through joblib's dask backend) is chosen in one
place. Results arrive unordered; callers key them by task, which is what keeps output bytes
independent of the number and kind of workers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TypeVar

from ipmix_cli.cores import resolve_jobs
from ipmix_cli.errors import BackendError

T = TypeVar("T")
R = TypeVar("R")

BACKENDS = ("threads", "loky", "dask")


def resolve_backend(backend: str | None, scheduler: str | None, default: str = "loky") -> str:
    """``--backend`` defaults to dask when ``--scheduler`` is given, else to the command's
    ``default``; a scheduler with another backend is refused rather than silently ignored."""
    if backend is None:
        return "dask" if scheduler else default
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r} (choose {' or '.join(BACKENDS)})")
    if scheduler and backend != "dask":
        raise BackendError(f"--scheduler {scheduler} needs --backend dask (got {backend})")
    return backend


def backend_session(
    backend: str, scheduler: str | None
) -> contextlib.AbstractContextManager[object]:
    """What a command wraps its job in: a connection to ``scheduler`` for the dask backend (the
    tasks then run there), else nothing (loky, or dask on a local cluster made per job)."""
    if backend == "dask" and scheduler:
        from ipmix_cli.jobs.distributed import connect

        return connect(scheduler)
    return contextlib.nullcontext()


def run_unordered(
    function: Callable[[T], R], tasks: Iterable[T], jobs: int, backend: str = "loky"
) -> Iterator[R]:
    """Yield ``function(task)`` for every task, in completion order.

    With one job the tasks run in this process: no start-up cost, and the tests compare this
    path against real worker processes to prove the output does not depend on where it ran.

    ``backend="dask"`` runs every task on dask workers (never in this process, even with one
    job): those of the open default ``distributed.Client`` (:func:`backend_session`), else of a
    local cluster of ``jobs`` worker processes started for this call.
    """
    n_jobs = resolve_jobs(jobs)
    task_list = list(tasks)
    if backend == "dask":
        from ipmix_cli.jobs.distributed import run_unordered_dask

        yield from run_unordered_dask(
            function, task_list, n_workers=max(1, min(n_jobs, len(task_list)))
        )
        return
    if n_jobs == 1 or len(task_list) <= 1:
        for task in task_list:
            yield function(task)
        return
    if backend == "threads":
        yield from _run_threads(function, task_list, min(n_jobs, len(task_list)))
        return
    import joblib  # here: 45 ms of imports (loky, psutil, asyncio) a one-job command skips

    parallel = joblib.Parallel(
        n_jobs=min(n_jobs, len(task_list)), backend=backend, return_as="generator_unordered"
    )
    yield from parallel(joblib.delayed(function)(task) for task in task_list)


def _run_threads(function: Callable[[T], R], tasks: list[T], n_threads: int) -> Iterator[R]:
    """Threads of this process, for functions whose heavy part releases the GIL (the numba
    kernels, hashing, file writes): no worker start-up, and the inputs are loaded once.

    Threads cannot be killed, so an interrupt or an error is a clean stop rather than an
    abandonment: tasks not started are cancelled and the ones running are waited for (a shard
    each, a fraction of a second). Leaving them running into interpreter shutdown crashes it.
    joblib's threading backend does just that on an interrupt, hence an executor here.
    """
    with ThreadPoolExecutor(n_threads, thread_name_prefix="ipmix-worker") as pool:
        futures = [pool.submit(function, task) for task in tasks]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            for future in futures:
                future.cancel()
