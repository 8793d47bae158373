"""What the page cache holds of a file, and how to empty it, for tests of code whose only
effect is on the cache (direct writes, read-ahead)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

needs_fincore = pytest.mark.skipif(shutil.which("fincore") is None, reason="needs fincore")


def resident_bytes(path: Path) -> int:
    """How much of ``path`` the page cache holds, as util-linux's fincore counts it."""
    report = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(report.stdout.split()[0])


def evict(path: Path) -> None:
    """Drop ``path``'s pages from the cache (written back first: dirty pages stay); skips the
    test where the file system keeps them anyway (tmpfs)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    if resident_bytes(path) > 0:
        pytest.skip(f"{path.parent} keeps its files' pages cached")
