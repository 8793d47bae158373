"""Reading rows out of one shard file, fast: memory-mapped where possible, h5py otherwise.

For uncompressed shards (the default) the reader asks HDF5 once where the rows of each image
dataset lie in the file, memory-maps the file read-only and gathers a batch with a few
``numpy.take`` calls: no HDF5 call per batch, no chunk cache, and a random row costs one 3 KB
copy instead of decompressing or reading a whole 512 KiB chunk. Each numpy call releases the
GIL once, so reads overlap with other threads (``tf.data``, prefetchers) and do not collapse
when another thread is busy, as one system call per row did (every GIL release can cost a 5 ms
switch interval). When every map slot of a reader is taken, the few rows wanted from a cold
shard are read with ``pread`` instead of mapping it. Compressed shards (lzf, gzip) go through
h5py, each touched chunk decompressed once per batch. ``benchmarks/bench_read.py`` measures the
ways against each other and against the entry's virtual dataset.

Coded shards (one JPEG or PNG file per row, :mod:`ipmix_cli.shards.codec`) are read through
h5py too: :meth:`OpenShard.read_blobs` fetches the touched rows' bytes with one read per batch,
and the caller decodes the rows of all shards of a batch together, in a thread pool
(``ShardReader.read``), since with shuffled batches most shards contribute a row or two.

Shards are never modified in place (writers replace them atomically), which is what makes
mapping them safe; a file whose identity (device, inode, size, mtime) changed since its
metadata was read is refused rather than misread. A shard cache's copy of a remote shard is
identified without its mtime: the cache bumps that for its LRU (from any process, at any time),
and it never rewrites a copy in place, only replaces it (a new inode).
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Sequence
from typing import Any

import h5py
import numpy as np

from ipmix_cli.errors import ShardError, one_line
from ipmix_cli.shards.attrs import decode_attr
from ipmix_cli.shards.codec import dataset_codec, dataset_image_shape, decode_into

FEW_ROWS = 4  # rows of an unopened shard read with pread when every map slot is taken
_LONG_RUN = 16  # rows: from here a run is read straight into the batch by h5py


def _direct_layout(dset: h5py.Dataset, file_size: int) -> list[tuple[int, int, int]] | None:
    """Where the rows of image dataset ``dset`` lie in its file, as segments
    ``(first_row, byte_offset, rows)`` of back-to-back chunks, when it can be read straight
    from the file (uint8, no filters, every chunk allocated, whole images per chunk, inside the
    file); else ``None`` (read through h5py). A shard written in one go has one or two."""
    if dset.dtype != np.uint8 or dset.id.get_create_plist().get_nfilters() != 0:
        return None
    n = dset.shape[0]
    row = int(np.prod(dset.shape[1:], dtype=np.int64))
    if dset.chunks is None:
        offset = dset.id.get_offset()
        if offset is None or offset + n * row > file_size:
            return None
        return [(0, int(offset), n)]
    if tuple(dset.chunks[1:]) != tuple(dset.shape[1:]):
        return None
    k = int(dset.chunks[0])
    n_chunks = -(-n // k)
    offsets = np.full(n_chunks, -1, dtype=np.int64)
    found: list[Any] = []
    dset.id.chunk_iter(found.append)
    for info in found:
        index = int(info.chunk_offset[0]) // k
        if info.filter_mask != 0 or index >= n_chunks or info.size < min(k, n - index * k) * row:
            return None
        offsets[index] = info.byte_offset
    if (offsets < 0).any():
        return None
    cut = np.flatnonzero(np.diff(offsets) != k * row) + 1
    firsts = np.concatenate(([0], cut)).tolist()
    lasts = np.concatenate((cut, [n_chunks])).tolist()
    segments = [
        (a * k, int(offsets[a]), min(b * k, n) - a * k) for a, b in zip(firsts, lasts, strict=True)
    ]
    if any(offset + rows * row > file_size for _, offset, rows in segments):
        return None
    return segments


class ShardMeta:
    """What a process learns about a shard once: its 1-D datasets (labels, ...) and, for
    direct reads, where the rows of each image dataset lie in the file. Kept apart from open
    files so that re-opening a shard closed by the LRU costs an ``open`` and an ``mmap``, not
    an HDF5 parse."""

    def __init__(
        self,
        path: str,
        count: int,
        image_names: Sequence[str],
        index_names: Sequence[str],
        direct: bool,
        cached_copy: bool = False,
        recorded: tuple[int, str] | None = None,
    ) -> None:
        self.path, self.count = path, count
        self.cached_copy = cached_copy  # a shard cache's copy of a remote shard
        self.layout: dict[str, list[tuple[int, int, int]]] | None = None
        with _open_h5(path) as f:
            self.identity = _identity(os.stat(path), cached_copy)
            if recorded is not None:
                _check_recorded(path, f, *recorded)
            for name in (*image_names, *index_names):
                if name not in f or f[name].shape[0] != count:
                    have = f[name].shape[0] if name in f else "no"
                    raise ShardError(path, f"'{name}' has {have} rows, the entry records {count}")
            self.index = {name: np.asarray(f[name][()], dtype=np.int64) for name in index_names}
            try:  # "raw", or how each row is encoded (then the shape is an attribute)
                self.codecs = {name: dataset_codec(f[name]) for name in image_names}
                shapes = {dataset_image_shape(f[name]) for name in image_names}
            except ValueError as error:
                raise ShardError(path, one_line(error, 200)) from None
            if len(shapes) != 1:
                raise ShardError(path, f"image datasets disagree on their shape: {shapes}")
            self.shape = shapes.pop()
            if direct:
                size = self.identity[2]
                layouts = {name: _direct_layout(f[name], size) for name in image_names}
                if all(v is not None for v in layouts.values()):
                    self.layout = {k: v for k, v in layouts.items() if v is not None}
                    if not self._direct_matches(f):
                        self.layout = None

    def is_current(self) -> bool:
        """Whether the file at :attr:`path` is still the one this metadata describes (a shard
        cache may have evicted it and fetched it again: same bytes, a new file)."""
        try:
            return _identity(os.stat(self.path), self.cached_copy) == self.identity
        except OSError:
            return False

    def read_images(self, name: str, local: np.ndarray, out: np.ndarray, dest: np.ndarray) -> None:
        """Rows ``local`` of image dataset ``name`` into ``out[dest]`` with one positioned read
        each, without mapping the file (see ``ShardReader._shard``)."""
        segments = self.layout[name]  # type: ignore[index]
        row_bytes = int(np.prod(self.shape))
        flat = memoryview(out.reshape(-1))
        fd = _open_raw(self)
        try:
            for r, d in zip(local.tolist(), dest.tolist(), strict=True):
                first, offset, _ = next(seg for seg in reversed(segments) if seg[0] <= r)
                at = offset + (r - first) * row_bytes
                if _pread_into(fd, flat[d * row_bytes : (d + 1) * row_bytes], at) != row_bytes:
                    raise ShardError(self.path, f"short read of '{name}': shard truncated?")
        finally:
            os.close(fd)

    def _direct_matches(self, f: h5py.File) -> bool:
        """Guard against misreading the chunk table: the first and last rows read both ways
        must agree. (Offsets from HDF5 are absolute, user block included.)"""
        shard = OpenShard(self)
        try:
            for name in self.layout or {}:
                dset = f[name]
                out = np.empty((2, *self.shape), np.uint8)
                shard.read_images(name, np.array([0, self.count - 1]), out, np.arange(2))
                if not (np.array_equal(out[0], dset[0]) and np.array_equal(out[1], dset[-1])):
                    return False
            return True
        finally:
            shard.close()


def _check_recorded(path: str, f: h5py.File, index: int, checksum: str) -> None:
    """Refuse a shard whose own attributes are not the entry's record of shard ``index``.

    Opening an output compares each shard's size only (one ``stat`` each), and shards of one
    output are often the same size: one copied over another read as the wrong rows, silently.
    The shard's index and checksum attributes, read here once per process as the file is
    parsed anyway, tell (re-hashing the data is ``ipmix verify``'s job)."""
    own = f.attrs.get("shard_index")
    if own is not None and int(decode_attr(own)) != index:
        raise ShardError(
            path, f"holds shard {int(decode_attr(own))}, but the entry records shard {index} here"
        )
    own_checksum = f.attrs.get("checksum")
    if own_checksum is not None and decode_attr(own_checksum) != checksum:
        raise ShardError(path, "shard was replaced: its checksum differs from the entry's record")


def _identity(st: os.stat_result, cached_copy: bool = False) -> tuple[int, int, int, int]:
    """What says a file is the one its metadata describes. Not the mtime of a shard-cache copy:
    the cache touches it to mark it used, which must not make another reader refuse it."""
    return (st.st_dev, st.st_ino, st.st_size, 0 if cached_copy else st.st_mtime_ns)


def _open_raw(meta: ShardMeta) -> int:
    """A file descriptor on ``meta``'s shard, checked to be the file the metadata describes."""
    try:
        fd = os.open(meta.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    except OSError as error:
        raise ShardError(meta.path, f"shard is missing: {one_line(error, 160)}") from None
    if _identity(os.fstat(fd), meta.cached_copy) != meta.identity:  # offsets would point elsewhere
        os.close(fd)
        raise ShardError(meta.path, "shard file changed on disk while reading; reopen the output")
    return fd


def _pread_into(fd: int, buffer: memoryview, offset: int) -> int:
    if hasattr(os, "preadv"):
        return os.preadv(fd, [buffer], offset)
    os.lseek(fd, offset, os.SEEK_SET)  # (Windows; the descriptor is ours alone)
    data = os.read(fd, len(buffer))
    buffer[: len(data)] = data
    return len(data)


def _open_h5(path: str) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except (OSError, ValueError) as error:
        missing = "missing" if not os.path.exists(path) else "unreadable"
        raise ShardError(path, f"shard is {missing}: {one_line(error, 160)}") from None


class OpenShard:
    """One shard opened in this process: a read-only memory map of the file with numpy views
    of its image rows (uncompressed shards), or an h5py handle (compressed shards), plus its
    :class:`ShardMeta`. Closed when the LRU has dropped it and no read in flight uses it.

    Why a memory map rather than ``os.pread``: a batch is then gathered by a few numpy calls
    (``take``), each releasing the GIL once, instead of one system call, and one GIL release,
    per row. With another busy Python thread in the process (a training loop, tf.data), every
    GIL release can cost a 5 ms switch interval; per-row reads collapsed to ~1,000 images/s
    there while the gather keeps its speed. Shards are never modified in place (writers
    replace them atomically), which is what makes mapping them safe.
    """

    def __init__(self, meta: ShardMeta) -> None:
        self.meta = meta
        self.path = meta.path
        self.index = meta.index
        self.codecs = meta.codecs
        self.h5: h5py.File | None = None
        self.datasets: dict[str, h5py.Dataset] = {}
        self.mapped: mmap.mmap | None = None
        self.views: dict[str, tuple[np.ndarray, list[np.ndarray]]] = {}
        if meta.layout is not None:
            fd = _open_raw(meta)
            try:
                self.mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            finally:
                os.close(fd)  # the map keeps what it needs
        else:
            self.h5 = _open_h5(meta.path)
            if _identity(os.stat(meta.path), meta.cached_copy) != meta.identity:
                self.close()
                raise ShardError(
                    meta.path, "shard file changed on disk while reading; reopen the output"
                )
        for name, segments in (meta.layout or {}).items():
            firsts = np.array([first for first, _, _ in segments], dtype=np.int64)
            arrays = [
                np.ndarray((rows, *meta.shape), np.uint8, buffer=self.mapped, offset=offset)
                for _, offset, rows in segments
            ]
            self.views[name] = (firsts, arrays)

    def close(self) -> None:
        self.views = {}
        if self.mapped is not None:
            with contextlib.suppress(BufferError):  # a view still referenced: GC closes it
                self.mapped.close()
            self.mapped = None
        if self.h5 is not None:
            self.h5.close()

    def _dataset(self, name: str) -> h5py.Dataset:
        dset = self.datasets.get(name)
        if dset is None:  # kept open: its chunk cache then serves the next batch too
            dset = self.datasets[name] = self.h5[name]  # type: ignore[index]
        return dset

    def read_blobs(self, name: str, local: np.ndarray) -> np.ndarray:
        """The stored bytes of rows ``local`` (sorted, repeats allowed) of the coded dataset
        ``name``, as an object array of uint8 arrays, with one HDF5 read of the distinct rows
        (a hyperslab when they are consecutive, else a point selection).

        Why h5py's low-level read: a variable-length read costs ~50 us of set-up per call
        whatever its size, and ``dset[rows]`` adds as much again in selection handling (h5py
        3.16: 84 against 54 us for one row, 9 against 5 us a row for 32 rows)."""
        dset = self._dataset(name)
        if len(local) == 1 or bool((np.diff(local) > 0).all()):  # no repeats (np.unique: 11 us)
            rows, inverse = local, None
        else:
            rows, inverse = np.unique(local, return_inverse=True)
        space = dset.id.get_space()
        if int(rows[-1]) - int(rows[0]) == len(rows) - 1:
            space.select_hyperslab((int(rows[0]),), (len(rows),))
        else:
            space.select_elements(rows.reshape(-1, 1))
        block = np.empty(len(rows), dtype=dset.dtype)  # object, tagged as vlen uint8
        dset.id.read(h5py.h5s.create_simple((len(rows),)), space, block)
        return block if inverse is None else block[inverse.reshape(-1)]

    def read_images(self, name: str, local: np.ndarray, out: np.ndarray, dest: np.ndarray) -> None:
        """Copy rows ``local`` (sorted) of dataset ``name`` into ``out[dest]`` (decoding them
        here, in this thread, for a coded dataset: ``ShardReader`` instead gathers a batch's
        coded rows from every shard and decodes them together)."""
        n = len(local)
        if n == 0:
            return
        if self.codecs[name] != "raw":
            decode_into(self.read_blobs(name, local), out, dest, 1, self.codecs[name])
            return
        if self.h5 is not None:
            self._read_h5(self._dataset(name), local, out, dest)
            return
        firsts, arrays = self.views[name]
        if n == 1:  # the common case when a shuffled batch spans many shards
            r = int(local[0])
            g = (
                len(arrays) - 1
                if len(arrays) == 1
                else int(np.searchsorted(firsts, r, "right")) - 1
            )
            out[int(dest[0])] = arrays[g][r - int(firsts[g])]
            return
        if len(arrays) == 1:
            groups = [(0, n, 0)]
        else:
            seg = np.searchsorted(firsts, local, side="right") - 1
            cut = np.flatnonzero(np.diff(seg)) + 1
            bounds = np.concatenate(([0], cut, [n])).tolist()
            groups = list(zip(bounds[:-1], bounds[1:], seg[bounds[:-1]].tolist(), strict=True))
        d0 = int(dest[0])
        dest_run = int(dest[-1]) - d0 == n - 1 and (n < 3 or bool((np.diff(dest) == 1).all()))
        for s, e, g in groups:
            rows = local[s:e] - firsts[g]
            source = arrays[g]
            if dest_run:
                lo, m = int(rows[0]), e - s
                # consecutive rows: one copy (the span alone is not enough: sorted rows with a
                # repeat and a gap, [0, 2, 3, 3], span as much as [0, 1, 2, 3])
                if int(rows[-1]) - lo == m - 1 and (m < 3 or bool((np.diff(rows) == 1).all())):
                    out[d0 + s : d0 + e] = source[lo : lo + m]
                else:
                    np.take(source, rows, axis=0, out=out[d0 + s : d0 + e])
            else:
                out[dest[s:e]] = np.take(source, rows, axis=0)

    @staticmethod
    def _read_h5(dset: h5py.Dataset, local: np.ndarray, out: np.ndarray, dest: np.ndarray) -> None:
        """Compressed shards: long runs of consecutive rows are read with one h5py slice each;
        scattered rows are read one touched chunk at a time, so each chunk is decompressed once
        per batch whatever the number of rows taken from it."""
        cut = np.flatnonzero((np.diff(local) != 1) | (np.diff(dest) != 1)) + 1
        starts = np.concatenate(([0], cut))
        ends = np.concatenate((cut, [len(local)]))
        long = (ends - starts) >= _LONG_RUN
        for s, e in zip(starts[long].tolist(), ends[long].tolist(), strict=True):
            lo, d, m = int(local[s]), int(dest[s]), e - s
            out[d : d + m] = dset[lo : lo + m]  # (h5py 3.16: 1.5-2x faster than read_direct)
        if long.all():
            return
        keep = np.repeat(~long, ends - starts)
        local, dest = local[keep], dest[keep]
        k = dset.chunks[0] if dset.chunks else 1  # contiguous: row by row, never the whole set
        chunk = local // k
        cut = np.flatnonzero(np.diff(chunk) != 0) + 1
        for s, e in zip(
            np.concatenate(([0], cut)).tolist(),
            np.concatenate((cut, [len(local)])).tolist(),
            strict=True,
        ):
            lo, hi = int(local[s]), int(local[e - 1]) + 1
            block = dset[lo:hi]
            out[dest[s:e]] = block[local[s:e] - lo]
