"""The remembered sha256 of large inputs (``fs/digest_cache.py``), against hashlib itself."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

from ipmix_cli.fs import digest_cache
from ipmix_cli.fs.digest_cache import sha256_file


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """Caching for files of 1 KiB and up, recorded at once, in a cache of the test's own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("IPMIX_DIGEST_CACHE", raising=False)
    monkeypatch.setattr(digest_cache, "CACHE_MIN_BYTES", 1024)
    monkeypatch.setattr(digest_cache, "SETTLED_S", 0.0)
    return tmp_path / "cache" / "ipmix" / "digests"


def _file(path, seed: int, size: int = 50_000):
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _plant(folder, digest: str) -> None:
    """Overwrite every recorded digest with ``digest``: the next answer shows whether the
    record was trusted."""
    for entry in folder.iterdir():
        record = json.loads(entry.read_text())
        record["sha256"] = digest
        entry.write_text(json.dumps(record))


def test_remembered_while_the_file_is_unchanged(tmp_path, cache):
    path = tmp_path / "data.npz"
    want = _file(path, 0)
    assert sha256_file(path) == want
    assert len(list(cache.iterdir())) == 1
    _plant(cache, "0" * 64)
    assert sha256_file(path) == "0" * 64  # the record is what answered


@pytest.mark.parametrize("change", ["same size, times put back", "appended", "replaced"])
def test_any_change_is_seen(tmp_path, cache, change):
    path = tmp_path / "data.npz"
    _file(path, 0)
    sha256_file(path)
    _plant(cache, "0" * 64)
    st = os.stat(path)
    if change == "same size, times put back":
        with open(path, "r+b") as handle:
            handle.seek(100)
            handle.write(b"\x00\x01\x02")
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # the status-change time moves
        want = hashlib.sha256(path.read_bytes()).hexdigest()
    elif change == "appended":
        with open(path, "ab") as handle:
            handle.write(b"more")
        want = hashlib.sha256(path.read_bytes()).hexdigest()
    else:
        other = tmp_path / "other"
        want = _file(other, 1)
        os.replace(other, path)
    assert sha256_file(path) == want


def test_small_files_and_fresh_files_are_not_recorded(tmp_path, cache, monkeypatch):
    small = tmp_path / "small"
    want = _file(small, 0, size=1000)
    assert sha256_file(small) == want
    monkeypatch.setattr(digest_cache, "SETTLED_S", 60.0)
    fresh = tmp_path / "fresh"
    want = _file(fresh, 2)
    assert sha256_file(fresh) == want
    assert not cache.exists() or not list(cache.iterdir())


def test_broken_or_unwritable_cache_is_ignored(tmp_path, cache, monkeypatch):
    path = tmp_path / "data"
    want = _file(path, 3)
    sha256_file(path)
    for entry in cache.iterdir():
        entry.write_text("{not json")
    assert sha256_file(path) == want
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    assert sha256_file(path) == want


def test_off_switch(tmp_path, cache, monkeypatch):
    monkeypatch.setenv("IPMIX_DIGEST_CACHE", "off")
    path = tmp_path / "data"
    want = _file(path, 4)
    assert sha256_file(path) == want
    assert not cache.exists()
