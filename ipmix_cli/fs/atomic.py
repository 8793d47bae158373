"""Atomic file creation: readers never see a half-written file under its final name.

Every output of ipmix (PNG images, chunk records, shards, manifests) goes through here so a
killed run leaves either the complete file or nothing, which is what makes ``--resume`` safe.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import os
import re
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ipmix_cli.errors import DiskFullError, OutputError
from ipmix_cli.fs import direct_io

TEMPORARY_NAME = re.compile(r"^\..+\.\d+\.[0-9a-f]{8}\.tmp$")
"""What :func:`temporary_sibling` names look like: ``.<final name>.<pid>.<8 hex>.tmp``."""

_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def temporary_sibling(path: Path) -> Path:
    """A unique temporary name in the same folder (same file system, so rename is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def is_temporary_name(name: str) -> bool:
    """Whether ``name`` is a temporary file of ours (left behind if a run was killed)."""
    return TEMPORARY_NAME.match(name) is not None


def is_disk_full(error: BaseException) -> bool:
    """ENOSPC or EDQUOT, however the library that hit it wrapped it."""
    return isinstance(error, OSError) and error.errno in _NO_SPACE


def write_error(path: Path, error: OSError) -> OutputError:
    """The one-line error for a failed write of ``path`` (disk full told apart)."""
    if is_disk_full(error):
        return DiskFullError(f"no space left on device writing {path}")
    return OutputError(path, f"cannot write ({error.strerror or error})")


Buffer = bytes | bytearray | memoryview
"""Anything :func:`write_new_file` writes: a bytes-like object with C-contiguous memory."""


def write_new_file(path: Path, data: Buffer | Sequence[Buffer], fsync: bool = False) -> None:
    """Create ``path`` (a temporary name) holding ``data``, with plain system calls: a full disk
    is then an ``OSError`` raised here, never a failure inside a library's own writer (HDF5's
    leaves objects that crash the interpreter when they are freed). ``data`` may be a list of
    pieces written one after another, so a file assembled from several arrays needs no copy
    of them joined; a large file bypasses the page cache (:mod:`ipmix_cli.fs.direct_io`).
    ``fsync``: make it durable through the same descriptor (one open instead of
    a second one in :func:`fsync_path`)."""
    pieces = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
    views = [memoryview(piece).cast("B") for piece in pieces]
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = direct_io.open_direct(path, flags) if sum(map(len, views)) >= direct_io.THRESHOLD else None
    direct = fd is not None
    if fd is None:
        fd = os.open(path, flags, 0o644)
    try:
        if not (direct and direct_io.write_direct(fd, views)):
            for view in views:
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
    os.close(fd)


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


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` atomically; a failure is one line naming ``path``."""
    final = Path(path)
    try:
        with atomic_path(final) as tmp:
            write_new_file(tmp, data)
    except OSError as error:
        raise write_error(final, error) from None


def remove_stale_temporaries(folder: Path) -> int:
    """Delete temporary files a killed run left in ``folder``; return how many.

    Only call this when no other process writes into ``folder`` (i.e. when resuming).
    """
    removed = 0
    if folder.is_dir():
        for leftover in folder.iterdir():
            if is_temporary_name(leftover.name):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
                    removed += 1
    return removed


@dataclass(frozen=True)
class StagedFile:
    """A complete file under its temporary name, to be given its final name by the process
    that owns the output (a worker process stages, its parent commits: an orphaned worker can
    then never put a file under a final name). Small and picklable.

    A file staged under :func:`deferred_writes` is not written yet: ``deferred`` holds its
    pieces and :meth:`commit` writes them (on the committing thread, while the computing one
    goes on). Pickling it writes it first, so a pickled one is always complete."""

    tmp: Path
    final: Path
    deferred: list[Sequence[Buffer]] = field(default_factory=list, compare=False, repr=False)

    @property
    def waiting_bytes(self) -> int:
        """Bytes staged but not written yet (what a deferred file keeps in memory)."""
        return sum(len(memoryview(p).cast("B")) for pieces in self.deferred for p in pieces)

    def commit(self) -> None:
        try:
            if self.deferred:
                write_new_file(self.tmp, self.deferred.pop(), fsync=True)
                os.replace(self.tmp, self.final)
                fsync_dir(self.final.parent)
            else:
                commit_temporary(self.tmp, self.final)
        except OSError as error:
            self.discard()
            raise write_error(self.final, error) from None
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        self.deferred.clear()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()

    def __getstate__(self) -> dict[str, object]:
        if self.deferred:
            try:
                write_new_file(self.tmp, self.deferred.pop())
            except OSError as error:
                raise write_error(self.final, error) from None
        return {"tmp": self.tmp, "final": self.final}

    def __setstate__(self, state: dict[str, object]) -> None:
        object.__setattr__(self, "tmp", state["tmp"])
        object.__setattr__(self, "final", state["final"])
        object.__setattr__(self, "deferred", [])


_DEFERRED = contextvars.ContextVar("ipmix_deferred_writes", default=False)


@contextlib.contextmanager
def deferred_writes() -> Iterator[None]:
    """Within the block, :func:`stage_bytes` only records what to write, and
    :meth:`StagedFile.commit` writes it. Why: a large file goes past the page cache
    (:mod:`~ipmix_cli.fs.direct_io`), so its write waits on the device, 1.8 s of a 15 s run of
    16,000 rows at 224 px here; when a job's tasks run in its own process, its commit thread
    can wait for that instead of the thread that computes the next shard. Only for files
    committed in this process: a worker process's files must be written before they are
    handed back (pickling one writes it)."""
    token = _DEFERRED.set(True)
    try:
        yield
    finally:
        _DEFERRED.reset(token)


def stage_bytes(final: Path, data: Buffer | Sequence[Buffer], durable: bool = False) -> StagedFile:
    """Write ``data`` (one buffer or pieces, as :func:`write_new_file` takes) under a temporary
    name beside ``final``; commit it later. ``durable``: fsync it already (the caller then
    renames it without :meth:`StagedFile.commit`). Under :func:`deferred_writes` (and not
    ``durable``) the write itself waits for the commit."""
    tmp = temporary_sibling(final)
    if _DEFERRED.get() and not durable:
        pieces = [data] if isinstance(data, (bytes, bytearray, memoryview)) else list(data)
        return StagedFile(tmp, final, [pieces])
    try:
        write_new_file(tmp, data, fsync=durable)
    except OSError as error:
        raise write_error(final, error) from None
    return StagedFile(tmp, final)
