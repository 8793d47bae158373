"""Shared by the tests that stop a real ``ipmix`` run part-way: make an input big enough to
interrupt, then signal the run's whole process group once some shards exist."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def random_npz(path: Path, count: int, seed: int) -> Path:
    """``count`` random 32 px images with labels 0-9, as an ``np.savez`` file."""
    rng = np.random.default_rng(seed)
    np.savez(
        path,
        images=rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8),
        labels=rng.integers(0, 10, count),
    )
    return path


def wait_for_shards(
    shards: Path, count: int, process: subprocess.Popen, pattern: str = "shard-*.h5"
) -> int:
    """Poll until ``count`` files matching ``pattern`` exist in ``shards`` (or the run ended);
    return how many there are."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        done = len(list(shards.glob(pattern)))
        if done >= count:
            return done
        time.sleep(0.01)
    return len(list(shards.glob(pattern)))


def _as_a_terminal_job() -> None:
    """Ctrl-C as a terminal delivers it: a test suite started in the background by a script
    (``pytest &``) ignores SIGINT, and every child inherits that, so the run under test would
    never see the interrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_after_shards(
    args: list, shards: Path, count: int, sig: signal.Signals, pattern: str = "shard-*.h5"
) -> tuple[int, str, subprocess.Popen]:
    """Run ``python -m ipmix_cli *args`` in its own process group (like a job in a terminal),
    send ``sig`` to the group once ``count`` shards (files matching ``pattern``) exist, and
    wait for it to end.

    Returns the shards under their final names once it ended, its stderr, and the process."""
    process = subprocess.Popen(
        [sys.executable, "-m", "ipmix_cli", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=_as_a_terminal_job,
    )
    try:
        wait_for_shards(shards, count, process, pattern)
        os.killpg(process.pid, sig)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return len(list(shards.glob(pattern))), stderr, process
