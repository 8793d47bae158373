"""Worker processes die with the process that started them.

A local worker process (joblib's loky) whose parent is killed (``SIGKILL``, a closed terminal, an
out-of-memory kill) would otherwise live on for minutes with parent 1, computing and writing
temporary files into an output that may meanwhile be overwritten by the next run. Every task
that may run in such a worker starts :func:`die_with_parent` with the parent's pid: the first
call in a process starts a watchdog thread that ends the process within a fraction of a second
of the parent's death. Commits (renames to final names) are made by the parent only, so even
in that fraction of a second an orphan cannot put anything under a final name.
"""

from __future__ import annotations

import os
import threading
import time

POLL_S = 0.2
_started: set[int] = set()
_lock = threading.Lock()


def die_with_parent(parent_pid: int | None) -> None:
    """In a worker process of ``parent_pid``, make sure the watchdog runs (no-op elsewhere:
    in the parent itself, or with ``None`` for workers that belong to a cluster)."""
    if parent_pid is None or parent_pid == os.getpid():
        return
    with _lock:
        if parent_pid in _started:
            return
        _started.add(parent_pid)
    if os.getppid() != parent_pid:  # already orphaned before the first task
        os._exit(1)
    threading.Thread(
        target=_watch, args=(parent_pid,), name="ipmix-orphan-watch", daemon=True
    ).start()


def _watch(parent_pid: int) -> None:
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)  # no clean-up on purpose: the parent's next run cleans temporaries
        time.sleep(POLL_S)
