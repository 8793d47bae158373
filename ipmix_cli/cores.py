"""How many cores a command may use: joblib's ``--jobs`` convention, in one place for every
layer that starts workers (the jobs, and ``verify``)."""

from __future__ import annotations

import os


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
