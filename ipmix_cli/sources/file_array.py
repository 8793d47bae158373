"""A C-order array stored at an offset of a file, read with positioned reads on demand.

``.npy`` and uncompressed ``.npz`` images used to be memory-mapped: each worker then touched
only the pages it read. But a mapped file that is truncated meanwhile (``np.savez`` over the
same path while a job runs) kills the process with SIGBUS on its next read, no message. A
positioned read of the same rows costs the same copy out of the page cache and, on a file
that changed size, comes back short: an error naming the file instead of a crash.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ipmix_cli.errors import SourceError


class FileArray:
    """``shape`` / ``dtype`` of the array at ``offset`` in ``path``; ``a[i]``, ``a[i:j]`` and
    ``a[index_array]`` read those rows. Holds no open file (picklable, fork-safe)."""

    def __init__(self, path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path, self.offset = Path(path), int(offset)
        self.shape, self.dtype = tuple(int(s) for s in shape), np.dtype(dtype)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self._runs(np.array([int(key)], np.int64))[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            return self._runs(np.arange(start, stop, step, dtype=np.int64))
        return self._runs(np.asarray(key, dtype=np.int64).reshape(-1))

    def _runs(self, rows: np.ndarray) -> np.ndarray:
        """``rows`` (in range, any order), one read per run of consecutive rows."""
        n = self.shape[0]
        rows = np.where(rows < 0, rows + n, rows)
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise IndexError(f"row out of range 0..{n - 1}")
        out = np.empty((rows.size, *self.shape[1:]), self.dtype)
        flat = memoryview(out.reshape(-1).view(np.uint8))
        if rows.size == 0:
            return out
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for part in np.split(np.arange(rows.size), breaks):
                first, count = int(rows[part[0]]), len(part)
                want = count * self.row_bytes
                at = int(part[0]) * self.row_bytes
                done, position = 0, self.offset + first * self.row_bytes
                while done < want:  # a regular file reads in full unless it ends early
                    got = os.preadv(fd, [flat[at + done : at + want]], position + done)
                    if got <= 0:
                        raise SourceError(
                            self.path,
                            "is shorter than its header says: it changed while being read",
                        )
                    done += got
        finally:
            os.close(fd)
        return out
