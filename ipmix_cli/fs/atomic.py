"""Atomic file creation: readers never see a half-written file under its final name.

Every output of ipmix (PNG images, chunk records, shards, manifests) goes through here so a
killed run leaves either the complete file or nothing, which is what makes ``--resume`` safe.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


def temporary_sibling(path: Path) -> Path:
    """A unique temporary name in the same folder (same file system, so rename is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def fsync_path(path: Path) -> None:
    """Force a file's (or folder's) bytes to disk before it is renamed into place."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Persist a rename: the directory entry must reach the disk too."""
    with contextlib.suppress(OSError):  # not every platform/file system allows it
        fsync_path(folder)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on success fsync it and rename it to ``path``.

    On any exception (KeyboardInterrupt included) the temporary file is removed and ``path``
    is left untouched.
    """
    final = Path(path)
    tmp = temporary_sibling(final)
    try:
        yield tmp
        commit_temporary(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def commit_temporary(tmp: Path, final: Path) -> None:
    """Make a finished temporary file durable, then give it its final name (and make the
    rename durable). Split from :func:`atomic_path` so the waiting on the disk can happen away
    from the process that wrote the file, while that process computes the next one."""
    fsync_path(tmp)
    os.replace(tmp, final)
    fsync_dir(final.parent)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def remove_stale_temporaries(folder: Path) -> int:
    """Delete temporary files a killed run left in ``folder``; return how many.

    Only call this when no other process writes into ``folder`` (i.e. when resuming).
    """
    removed = 0
    if folder.is_dir():
        for leftover in folder.glob(".*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
                removed += 1
    return removed
