"""``run_unordered`` on threads: the same results as a serial run, and a clean stop (no thread
left running, tasks not started cancelled) when a task fails or the caller stops early."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from ipmix_cli.errors import BackendError
from ipmix_cli.jobs.parallel import resolve_backend, run_unordered


def _square_sum(n: int) -> tuple[int, int]:
    return n, int((np.arange(n, dtype=np.int64) ** 2).sum())


def _workers_alive() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("ipmix-worker")]


def test_threads_give_the_serial_results() -> None:
    tasks = list(range(0, 2000, 37))
    serial = dict(run_unordered(_square_sum, tasks, jobs=1))
    threaded = dict(run_unordered(_square_sum, tasks, jobs=2, backend="threads"))
    assert threaded == serial and len(serial) == len(tasks)
    assert serial[999] == sum(i * i for i in range(999))
    assert not _workers_alive()


def test_a_failing_task_stops_the_threads_cleanly() -> None:
    started: list[int] = []

    def task(i: int) -> int:
        started.append(i)
        time.sleep(0.02)
        if i == 3:
            raise ValueError("task 3 failed")
        return i

    with pytest.raises(ValueError, match="task 3 failed"):
        list(run_unordered(task, range(60), jobs=2, backend="threads"))
    assert not _workers_alive()
    assert 4 <= len(started) < 60, "tasks not yet started must be cancelled"


def test_closing_the_results_early_stops_the_threads() -> None:
    started: list[int] = []

    def task(i: int) -> int:
        started.append(i)
        time.sleep(0.02)
        return i

    results = run_unordered(task, range(60), jobs=2, backend="threads")
    first = next(results)
    results.close()
    assert 0 <= first < 60 and not _workers_alive()
    assert len(started) < 60


def test_backend_defaults_and_conflicts() -> None:
    assert resolve_backend(None, None, default="threads") == "threads"
    assert resolve_backend(None, "tcp://h:8786", default="threads") == "dask"
    with pytest.raises(BackendError, match="needs --backend dask"):
        resolve_backend("threads", "tcp://h:8786")
