"""HDF5 files built in memory and written to disk with plain system calls.

Why: when HDF5 itself hits a full disk, the h5py objects of that file are left in a state that
crashes the interpreter (a segmentation fault) when they are freed, however the error is
handled. Building the file in memory (HDF5's core driver, no backing store) and writing the
finished image with :func:`ipmix_cli.fs.atomic.write_new_file` turns a full disk into an
ordinary ``OSError``. The image is byte for byte what HDF5 would have written to the file.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
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
