"""Each image file's header check, remembered across scans of a folder while the file is unchanged.

Why: every command on a folder (``augment``, its ``--dry-run``, a ``--resume``, ``export``)
scans it first, opening each file for its header and its last bytes: ~35 us a file from the
page cache here, 45 s of one core for ImageNet's 1.28 million files, and one or two random
reads a file on a cold disk or a network file system, where a scan of ImageNet takes many
minutes. An unchanged file says the same thing the second time, so a later scan needs only a
``stat`` of each file (~4 us).

A file's record is keyed the way :mod:`ipmix_cli.fs.digest_cache` keys digests: device, inode,
size, modification and status-change times in nanoseconds. The status-change time moves on any
write, rename or ``touch`` and cannot be set back by a user, so an edited file is checked again
even if its size and modification time were put back. A file changed less than
:data:`SETTLED_S` seconds before it was checked is not remembered (a write within the file
system's timestamp granularity could go unseen), and failures are never remembered: a broken
file is checked, and reported, every time.

One ``.npz`` of plain arrays per folder (no pickle), under ``<cache root>/scans``, named by the
folder's real path, which it also holds. The cache only ever saves time: a record that cannot
be read, written or trusted is ignored, and ``IPMIX_SCAN_CACHE=off`` turns it off.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from ipmix_cli.fs.atomic import temporary_sibling, write_new_file
from ipmix_cli.fs.user_cache import cache_root

SETTLED_S = 2.0
"""A file changed more recently than this before its check is checked again next time."""

_VERSION = 1
Status = tuple[int, int, int, int, int]
Record = tuple[Status, int, int, str]
"""A file's status, then what its check found: height, width, format."""


def file_status(st: os.stat_result) -> Status:
    """What identifies one version of a file (see the module doc)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def settled(status: Status, now_ns: int) -> bool:
    """Whether a file of ``status`` last changed long enough before ``now_ns`` to remember."""
    return now_ns - max(status[3], status[4]) > SETTLED_S * 1e9


def enabled() -> bool:
    return os.environ.get("IPMIX_SCAN_CACHE", "").lower() not in ("off", "0", "no")


def _entry(root: str) -> tuple[str, Path]:
    real = os.path.realpath(root)
    name = hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:40]
    return real, cache_root() / "scans" / f"{name}.npz"


def load_records(root: str) -> dict[str, Record]:
    """The remembered checks of folder ``root``'s files, by path relative to it (posix); empty
    when there are none, the cache is off, or its file cannot be trusted."""
    if not enabled():
        return {}
    real, entry = _entry(root)
    try:
        with np.load(entry, allow_pickle=False) as stored:
            if int(stored["version"]) != _VERSION or str(stored["root"]) != real:
                return {}
            rels = stored["rels"].tobytes().decode("utf-8", "surrogateescape").split("\0")
            status = stored["status"].tolist()
            sizes = stored["sizes"].tolist()
            formats = str(stored["formats"]).split("\0")
            kinds = stored["kinds"].tolist()
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        return {}
    n = len(rels)
    if not (len(status) == len(sizes) == len(kinds) == n) or any(k >= len(formats) for k in kinds):
        return {}
    return {
        rel: (tuple(st), hw[0], hw[1], formats[k])
        for rel, st, hw, k in zip(rels, status, sizes, kinds, strict=True)
    }


def save_records(root: str, records: Mapping[str, Record]) -> None:
    """Remember ``records`` as folder ``root``'s (replacing what was there); errors ignored."""
    if not enabled():
        return
    real, entry = _entry(root)
    rels = list(records)
    formats = sorted({records[rel][3] for rel in rels})
    index = {name: i for i, name in enumerate(formats)}
    buffer = io.BytesIO()
    np.savez(
        buffer,
        version=np.int64(_VERSION),
        root=np.str_(real),
        rels=np.frombuffer("\0".join(rels).encode("utf-8", "surrogateescape"), np.uint8),
        status=np.array([records[rel][0] for rel in rels], np.int64).reshape(-1, 5),
        sizes=np.array([records[rel][1:3] for rel in rels], np.int32).reshape(-1, 2),
        formats=np.str_("\0".join(formats)),
        kinds=np.array([index[records[rel][3]] for rel in rels], np.uint8),
    )
    with contextlib.suppress(OSError):
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_sibling(entry)
        try:
            write_new_file(tmp, buffer.getvalue())
            os.replace(tmp, entry)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def subset(records: Mapping[str, Record], rels: Iterable[str]) -> dict[str, Record]:
    """The records of ``rels`` only: what one scan task (a chunk of files) is handed."""
    return {rel: records[rel] for rel in rels if rel in records}


def by_class(records: Mapping[str, Record]) -> dict[str, dict[str, Record]]:
    """The records grouped by their path's first folder (a class), in one pass: what each
    class task of a parallel scan is handed."""
    groups: dict[str, dict[str, Record]] = {}
    for rel, record in records.items():
        groups.setdefault(rel.split("/", 1)[0], {})[rel] = record
    return groups
