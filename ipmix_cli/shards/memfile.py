"""HDF5 files built in memory and written to disk with plain system calls.

Why: when HDF5 itself hits a full disk, the h5py objects of that file are left in a state that
crashes the interpreter (a segmentation fault) when they are freed, however the error is
handled. Building the file in memory (HDF5's core driver, no backing store) and writing the
finished image with :func:`ipmix_cli.fs.atomic.write_new_file` turns a full disk into an
ordinary ``OSError``. The image is byte for byte what HDF5 would have written to the file.

:func:`h5_metadata_only` is the same for a file whose bulk data HDF5 never writes (see
:mod:`ipmix_cli.shards.direct_rows`): what HDF5 writes is kept as a few extents, and the
unwritten space costs no memory at all, where the core driver would zero and copy it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from bisect import bisect_left
from collections.abc import Iterator

import h5py

_NAMES = itertools.count()
_NAMES_LOCK = threading.Lock()


@contextlib.contextmanager
def h5_in_memory(size_hint: int) -> Iterator[tuple[h5py.File, list[bytes]]]:
    """Yield ``(file, image)``: write into ``file``; once the block ends, ``image[0]`` holds the
    finished file's bytes. ``size_hint`` (bytes) sizes the first allocation, so a file of about
    that size is built without reallocating."""
    with _NAMES_LOCK:
        name = f"ipmix-memory-{os.getpid()}-{next(_NAMES)}.h5"  # unique among open core files
    block = max(64 * 1024, int(size_hint) + 256 * 1024)
    f = h5py.File(name, "w", driver="core", backing_store=False, block_size=block)
    image: list[bytes] = []
    try:
        yield f, image
        f.flush()
        image.append(f.id.get_file_image())
    finally:
        f.close()


class SparseImage:
    """A file-like object HDF5 writes through h5py's file-object driver, holding only the
    byte ranges written; everything else reads as zeros, as in a sparse file on disk."""

    def __init__(self) -> None:
        self.extents: list[tuple[int, bytearray]] = []  # (start, bytes), sorted, disjoint
        self.size = 0
        self._pos = 0

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.size}[whence]
        self._pos = base + int(offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def write(self, data: bytes | memoryview) -> int:
        """Store ``data`` at the position, merged with the extents it touches."""
        view = memoryview(data).cast("B")
        start, end = self._pos, self._pos + len(view)
        starts = [a for a, _ in self.extents]
        first = bisect_left(starts, start)
        if first and starts[first - 1] + len(self.extents[first - 1][1]) >= start:
            first -= 1  # the extent before reaches this write
        last = first
        while last < len(self.extents) and self.extents[last][0] <= end:
            last += 1
        touched = self.extents[first:last]
        lo = min([start, *(a for a, _ in touched)])
        hi = max([end, *(a + len(b) for a, b in touched)])
        merged = bytearray(hi - lo)
        for a, b in touched:
            merged[a - lo : a - lo + len(b)] = b
        merged[start - lo : end - lo] = view
        self.extents[first:last] = [(lo, merged)]
        self._pos = end
        self.size = max(self.size, end)
        return len(view)

    def readinto(self, buffer: memoryview) -> int:
        view = memoryview(buffer).cast("B")
        start, end = self._pos, min(self._pos + len(view), self.size)
        view[:] = bytes(len(view))
        for a, b in self.extents:
            lo, hi = max(a, start), min(a + len(b), end)
            if lo < hi:
                view[lo - start : hi - start] = b[lo - a : hi - a]
        self._pos = max(start, end)
        return max(0, end - start)

    def read(self, size: int = -1) -> bytes:
        size = max(0, self.size - self._pos) if size is None or size < 0 else size
        buffer = bytearray(size)
        return bytes(buffer[: self.readinto(memoryview(buffer))])

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else int(size)
        kept = []
        for a, b in self.extents:
            if a < size:
                kept.append((a, b[: size - a]))
        self.extents = kept
        self.size = size
        return size

    def flush(self) -> None:
        pass

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True


@contextlib.contextmanager
def h5_metadata_only() -> Iterator[tuple[h5py.File, SparseImage]]:
    """Yield ``(file, image)``: write into ``file`` (datasets whose chunks HDF5 never writes);
    once the block ends, ``image`` holds what HDF5 wrote and the file's size."""
    image = SparseImage()
    f = h5py.File(image, "w")
    try:
        yield f, image
        f.flush()
    finally:
        f.close()
