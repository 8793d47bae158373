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

import hashlib
import io
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ipmix_cli.fs.user_cache import (
    FileStatus,
    cache_off,
    cache_root,
    settled,
    write_cache_entry,
)

SETTLED_S = 2.0
"""A file changed more recently than this before its check is checked again next time."""

_VERSION = 2
Record = tuple[FileStatus, int, int, str]
"""A file's status (``user_cache.file_status``), then what its check found: height, width,
format."""


def remembers(status: FileStatus, now_ns: int) -> bool:
    """Whether a file of ``status``, checked well at ``now_ns``, is to be remembered."""
    return settled(status, now_ns, SETTLED_S)


def enabled() -> bool:
    return not cache_off("IPMIX_SCAN_CACHE")


def _encode(rel: str) -> bytes:
    return rel.encode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class Records:
    """Remembered checks as arrays sorted by path: ImageNet's 1.28 million files take ~120 MB
    this way, where a dict of tuples took 450 MB (and a copy of it in every forked scan
    worker that touched it). A scan task is handed the slice of its class or the lookups of
    its chunk, never the whole."""

    rels: np.ndarray  # bytes ('S'), relative posix paths, ascending
    status: np.ndarray  # (n, 5) int64: file_status
    sizes: np.ndarray  # (n, 2) int32: height, width
    kinds: np.ndarray  # (n,) uint8: index into formats
    formats: tuple[str, ...]

    @classmethod
    def empty(cls) -> Records:
        return cls.from_items([])

    @classmethod
    def from_items(cls, items: Iterable[tuple[str, Record]]) -> Records:
        pairs = list(items)
        formats = tuple(sorted({record[3] for _, record in pairs}))
        index = {name: i for i, name in enumerate(formats)}
        rels = np.array([_encode(rel) for rel, _ in pairs], dtype=bytes)
        order = np.argsort(rels, kind="stable")
        return cls(
            rels[order],
            np.array([r[0] for _, r in pairs], np.int64).reshape(-1, 5)[order],
            np.array([r[1:3] for _, r in pairs], np.int32).reshape(-1, 2)[order],
            np.array([index[r[3]] for _, r in pairs], np.uint8)[order],
            formats,
        )

    @classmethod
    def concat(cls, parts: Iterable[Records]) -> Records:
        """All of ``parts`` (disjoint paths) as one."""
        parts = [part for part in parts if len(part)]
        if not parts:
            return cls.empty()
        formats = tuple(sorted({name for part in parts for name in part.formats}))
        index = {name: i for i, name in enumerate(formats)}
        kinds = [np.array([index[n] for n in part.formats], np.uint8)[part.kinds] for part in parts]
        rels = np.concatenate([part.rels for part in parts])
        order = np.argsort(rels, kind="stable")
        return cls(
            rels[order],
            np.concatenate([part.status for part in parts])[order],
            np.concatenate([part.sizes for part in parts])[order],
            np.concatenate(kinds)[order],
            formats,
        )

    def __len__(self) -> int:
        return int(self.rels.shape[0])

    def within(self, folder: str) -> Records:
        """The records under ``folder`` (a class): one contiguous range of the sorted paths."""
        lo, hi = np.searchsorted(self.rels, [_encode(folder + "/"), _encode(folder + "0")])
        cut = slice(int(lo), int(hi))  # "0" is the byte after "/"
        return Records(
            self.rels[cut], self.status[cut], self.sizes[cut], self.kinds[cut], self.formats
        )

    def _rows(self, rels: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Positions in ``rels`` that have a record, and their records' rows."""
        if not len(self) or not rels:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        keys = np.array([_encode(rel) for rel in rels], dtype=bytes)
        at = np.minimum(np.searchsorted(self.rels, keys), len(self) - 1)
        found = np.flatnonzero(self.rels[at] == keys)
        return found, at[found]

    def select(self, rels: list[str]) -> Records:
        """The records of ``rels`` only, still as arrays: what one chunk's task is handed."""
        _, rows = self._rows(rels)
        rows = np.unique(rows)
        return Records(
            self.rels[rows], self.status[rows], self.sizes[rows], self.kinds[rows], self.formats
        )

    def lookup(self, rels: list[str]) -> dict[str, Record]:
        """The records of those of ``rels`` that have one."""
        found, rows = self._rows(rels)
        return {
            rels[i]: (
                tuple(self.status[j].tolist()),
                int(self.sizes[j, 0]),
                int(self.sizes[j, 1]),
                self.formats[self.kinds[j]],
            )
            for i, j in zip(found.tolist(), rows.tolist(), strict=True)
        }

    def same_as(self, other: Records) -> bool:
        return (
            len(self) == len(other)
            and np.array_equal(self.rels, other.rels)
            and np.array_equal(self.status, other.status)
            and np.array_equal(self.sizes, other.sizes)
            and [self.formats[k] for k in self.kinds.tolist()]
            == [other.formats[k] for k in other.kinds.tolist()]
        )


def _entry(root: str) -> tuple[str, Path]:
    real = os.path.realpath(root)
    name = hashlib.sha256(_encode(real)).hexdigest()[:40]
    return real, cache_root() / "scans" / f"{name}.npz"


def load_records(root: str) -> Records:
    """The remembered checks of folder ``root``'s files; empty when there are none, the cache
    is off, or its file cannot be trusted."""
    if not enabled():
        return Records.empty()
    real, entry = _entry(root)
    try:
        with np.load(entry, allow_pickle=False) as stored:
            if int(stored["version"]) != _VERSION or str(stored["root"]) != real:
                return Records.empty()
            formats = tuple(str(stored["formats"]).split("\0"))
            records = Records(
                stored["rels"], stored["status"], stored["sizes"], stored["kinds"], formats
            )
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        return Records.empty()
    n = len(records)
    shapes_ok = (
        records.rels.dtype.kind == "S"
        and records.status.shape == (n, 5)
        and records.sizes.shape == (n, 2)
        and records.kinds.shape == (n,)
        and (n == 0 or int(records.kinds.max()) < len(formats))
        and bool(np.all(records.rels[1:] > records.rels[:-1]))
    )
    return records if shapes_ok else Records.empty()


def save_records(root: str, records: Records) -> None:
    """Remember ``records`` as folder ``root``'s (replacing what was there); errors ignored."""
    if not enabled():
        return
    real, entry = _entry(root)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        version=np.int64(_VERSION),
        root=np.str_(real),
        rels=records.rels,
        status=records.status.astype(np.int64),
        sizes=records.sizes.astype(np.int32),
        formats=np.str_("\0".join(records.formats)),
        kinds=records.kinds.astype(np.uint8),
    )
    write_cache_entry(entry, buffer.getvalue())
