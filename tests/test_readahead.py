"""Read-ahead only warms the page cache: the advised ranges of a file come into memory, no
more than ``depth`` files ahead of the reader, and a file that cannot be opened is left for
the real read to report. What the job reads is the same with or without it."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from page_cache import evict, needs_fincore, resident_bytes

from ipmix_cli.fs.readahead import ReadAhead, advise, read_ahead

PAGE = os.sysconf("SC_PAGE_SIZE")
pytestmark = [
    needs_fincore,
    pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="needs posix_fadvise"),
]


def cold_files(folder: Path, count: int, size: int) -> list[Path]:
    rng = np.random.default_rng(count)
    paths = []
    for i in range(count):
        path = folder / f"f{i:03d}.bin"
        path.write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        evict(path)
        paths.append(path)
    return paths


def settled(paths: list[Path], seconds: float = 3.0) -> list[int]:
    """Resident bytes of each file once they stop changing (the advice reads asynchronously)."""
    before = [resident_bytes(p) for p in paths]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = [resident_bytes(p) for p in paths]
        if now == before:
            return now
        before = now
    return before


def test_whole_file_advice_brings_the_file_in(tmp_path: Path) -> None:
    (path,) = cold_files(tmp_path, 1, 64 * PAGE)
    assert resident_bytes(path) == 0
    advise(str(path))
    assert settled([path]) == [64 * PAGE]


def test_head_and_tail_advice_leaves_the_middle_on_disk(tmp_path: Path) -> None:
    """The scan's ranges: a header and a tail, a negative offset counting from the end."""
    size = 256 * PAGE
    (path,) = cold_files(tmp_path, 1, size)
    advise(str(path), ((0, PAGE), (-PAGE, PAGE)))
    resident = settled([path])[0]
    assert 2 * PAGE <= resident < size // 4, resident
    with open(path, "rb") as f:  # the middle was not read: reading it now adds pages
        f.seek(size // 2)
        f.read(16 * PAGE)
    assert resident_bytes(path) > resident


def test_missing_or_unreadable_files_are_skipped(tmp_path: Path) -> None:
    advise(str(tmp_path / "absent.jpg"))
    advise(str(tmp_path))  # a folder opens but cannot be advised on every system
    with read_ahead([str(tmp_path / "absent.jpg"), str(tmp_path)]) as ahead:
        assert ahead is not None
        ahead.consumed(2)


def test_stays_depth_files_ahead_of_the_reader(tmp_path: Path) -> None:
    paths = cold_files(tmp_path, 12, 8 * PAGE)
    ahead = ReadAhead([str(p) for p in paths], depth=3)
    try:
        assert [r > 0 for r in settled(paths)] == [True] * 3 + [False] * 9
        ahead.consumed(4)
        assert [r > 0 for r in settled(paths)] == [True] * 7 + [False] * 5
    finally:  # the thread waits for room; closing must not wait for the rest
        closer = threading.Thread(target=ahead.close, daemon=True)
        closer.start()
        closer.join(2.0)
    assert not closer.is_alive()
    assert [r > 0 for r in settled(paths)] == [True] * 7 + [False] * 5


def test_no_paths_no_thread() -> None:
    with read_ahead([]) as ahead:
        assert ahead is None
