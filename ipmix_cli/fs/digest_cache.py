"""The sha256 of a large input file, remembered across runs while the file is unchanged.

Why: a run fingerprints its input so that ``--resume`` can refuse a changed one, and hashing
costs about 0.1 s per 150 MB here: a tenth of a 50,000-image CIFAR run, and 20 s for a 30 GB
HDF5 input, paid again by every run, resume and dry run on it. The digest is kept under
``<cache root>/digests`` (see :mod:`ipmix_cli.fs.user_cache`), keyed by the file's real path,
device, inode, size, modification and status-change times in nanoseconds, the way git's index
trusts a file's status: the status-change time moves on any write or ``touch`` and cannot be
set back by a user. Two more guards: a digest is recorded only when the status was the same
before and after hashing, and only for files last changed over :data:`SETTLED_S` seconds
before, so a write within the file system's timestamp granularity cannot go unseen.

The cache only ever saves time: an entry that cannot be read, written or trusted is ignored,
and ``IPMIX_DIGEST_CACHE=off`` turns it off.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from ipmix_cli.fs.regular import open_regular
from ipmix_cli.fs.user_cache import cache_off, cache_root, file_status, settled, write_cache_entry

CACHE_MIN_BYTES = 16 << 20
"""Smaller files are hashed every time: that takes under 10 ms."""

SETTLED_S = 2.0
"""A file changed more recently than this is hashed but not remembered (yet)."""

_BLOCK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks (constant memory); remembered for
    files of :data:`CACHE_MIN_BYTES` or more while their status is unchanged."""
    with open(open_regular(path), "rb") as handle:  # a named pipe would wait forever
        before = os.fstat(handle.fileno())
        entry = _entry_path(path, before) if before.st_size >= CACHE_MIN_BYTES else None
        if entry is not None:
            remembered = _read_entry(entry, _status_key(path, before))
            if remembered is not None:
                return remembered
        digest = hashlib.sha256()
        while block := handle.read(_BLOCK):
            digest.update(block)
        after = os.fstat(handle.fileno())
    if entry is not None:
        recent = not settled(file_status(before), time.time_ns(), SETTLED_S)
        if not recent and _status_key(path, after) == _status_key(path, before):
            _write_entry(entry, _status_key(path, before), digest.hexdigest())
    return digest.hexdigest()


def _status_key(path: str | os.PathLike[str], st: os.stat_result) -> str:
    return f"{os.path.realpath(path)}\0" + ":".join(map(str, file_status(st)))


def _entry_path(path: str | os.PathLike[str], st: os.stat_result) -> Path | None:
    if cache_off("IPMIX_DIGEST_CACHE"):
        return None
    name = hashlib.sha256(_status_key(path, st).encode("utf-8", "surrogateescape")).hexdigest()
    return cache_root() / "digests" / f"{name[:40]}.json"


def _read_entry(entry: Path, key: str) -> str | None:
    try:
        record = json.loads(entry.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("status") != key:
        return None
    digest = record.get("sha256")
    ok = isinstance(digest, str) and len(digest) == 64
    return digest if ok and all(c in "0123456789abcdef" for c in digest) else None


def _write_entry(entry: Path, key: str, digest: str) -> None:
    write_cache_entry(entry, json.dumps({"status": key, "sha256": digest}).encode())
