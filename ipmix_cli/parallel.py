"""Run independent tasks through joblib and hand back results as they finish.

All parallel work in ipmix goes through here so the backend (loky processes locally, dask on a
cluster) is chosen in one place. Results arrive unordered; callers key them by task, which is
what keeps output bytes independent of the number of workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import joblib

T = TypeVar("T")
R = TypeVar("R")


def available_cores() -> int:
    """Cores this process may run on (respects affinity masks and container limits)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def resolve_jobs(jobs: int) -> int:
    """joblib's convention: -1 means every core, -2 all but one, and so on."""
    if jobs == 0:
        raise ValueError("--jobs must not be 0 (use -1 for all cores)")
    cores = available_cores()
    return jobs if jobs > 0 else max(1, cores + 1 + jobs)


def run_unordered(
    function: Callable[[T], R], tasks: Iterable[T], jobs: int, backend: str = "loky"
) -> Iterator[R]:
    """Yield ``function(task)`` for every task, in completion order.

    With one job the tasks run in this process: no start-up cost, and the tests compare this
    path against real worker processes to prove the output does not depend on where it ran.
    """
    n_jobs = resolve_jobs(jobs)
    task_list = list(tasks)
    if n_jobs == 1 or len(task_list) <= 1:
        for task in task_list:
            yield function(task)
        return
    parallel = joblib.Parallel(
        n_jobs=min(n_jobs, len(task_list)), backend=backend, return_as="generator_unordered"
    )
    yield from parallel(joblib.delayed(function)(task) for task in task_list)
