"""The numpy reader behind every framework adapter: :class:`ShardReader`.

It reads an ``ipmix augment`` output (``docs/format.md``) for training. Design choices and why:

* **Checked before use.** The constructor runs :func:`ipmix_cli.shards.check_output`, so a
  missing shard or one with the wrong count is an error, never a run of zero images (HDF5
  fills a virtual dataset's missing source silently).
* **Shard files, not the virtual dataset.** Batches are split by shard and read from the shard
  files. For uncompressed shards (the default) the reader asks HDF5 once where the rows of each
  image dataset lie in the file, memory-maps the file read-only and gathers a batch with a few
  ``numpy.take`` calls: no HDF5 call per batch, no chunk cache, and a random row costs one
  3 KB copy instead of decompressing or reading a whole 512 KiB chunk. Each numpy call
  releases the GIL once, so reads overlap with other threads (``tf.data``, prefetchers) and do
  not collapse when another thread is busy, as one system call per row did (every GIL release
  can cost a 5 ms switch interval). When more shards are wanted than ``max_open_files`` allows
  open, the few rows wanted from a cold shard are read with ``pread`` instead of mapping it.
  Compressed shards (lzf, gzip) go through h5py, each touched chunk decompressed once per
  batch. ``benchmarks/bench_read.py`` measures the ways against each other and against the
  entry's virtual dataset (as fast for sequential slices, ~100x slower for shuffled batches).
* **Nothing open is shared.** Files are opened lazily, per process, on first use; the pid is
  checked on every read so a handle inherited through ``fork`` (PyTorch workers) is never used,
  and pickling drops every handle (``spawn`` workers, grain, Ray re-open). At most
  ``max_open_files`` shards are open at once (least recently used closed first), so an output
  with thousands of shards stays within file-descriptor and memory limits.
* **Epochs pick copies.** Rows are copy-major (``row = copy * num_sources + source``).
  :func:`epoch_rows` serves epoch ``e`` from copy ``e % copies``, so N pre-computed copies give
  N epochs of fresh augmentations; shuffling is seeded by ``(seed, epoch)`` and the same on
  every rank, which then takes its own disjoint block.
* **Thread safe.** The table of open shards is guarded by a lock; reads hold a reference to
  their shard, so one thread closing a shard (LRU) never pulls a file from under another.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import queue
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np

from ipmix_cli.errors import ShardError, one_line
from ipmix_cli.shards import check_output

__all__ = [
    "EXTRAS",
    "ShardReader",
    "batch_slices",
    "epoch_rows",
    "prefetch",
]

IMAGE_VIEWS = ("clean", "images", "images2")
"""Image datasets a reader can return; ``clean`` and ``images2`` exist in JSD outputs only."""

EXTRAS = ("source_index", "copy_index", "row")
"""Optional per-row values after the labels: the input row, the copy, and the output row."""

EpochMode = Literal["copy", "all"]
Even = Literal["pad", "drop"] | None

_FEW_ROWS = 4  # rows of an unopened shard read with pread when every map slot is taken
_LONG_RUN = 16  # rows: from here a run is read straight into the batch by h5py
_META_CACHE = 8192  # shards whose metadata a process keeps (labels: 8 bytes a row)
_INHERITED: list[Any] = []  # handles inherited through fork: kept alive, never used or closed


# --------------------------------------------------------------------------------------------
# Epoch plans
# --------------------------------------------------------------------------------------------


def epoch_rows(
    num_sources: int,
    copies: int,
    epoch: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    even: Even = None,
    epoch_mode: EpochMode = "copy",
) -> np.ndarray:
    """The output rows that ``rank`` reads in ``epoch``, in reading order (int64).

    ``epoch_mode="copy"`` (default): epoch ``e`` reads copy ``e % copies`` of every source once,
    i.e. rows ``c * num_sources + s``, so each epoch sees a fresh augmentation of each image.
    ``"all"``: every epoch reads every row of every copy once.

    ``shuffle`` permutes with a generator seeded by ``(seed, epoch)``: the same order in every
    process and on every rank, different each epoch (also for epochs that reuse a copy). The
    plan is then cut into ``world_size`` contiguous blocks of sizes differing by at most one;
    ``rank`` gets its block, so ranks are disjoint and together cover the epoch exactly once.
    Distributed training usually needs equal lengths on every rank: ``even="pad"`` repeats the
    first rows to fill the last block (like ``DistributedSampler``), ``even="drop"`` drops up to
    ``world_size - 1`` rows.
    """
    num_sources, copies, epoch = int(num_sources), int(copies), int(epoch)
    world_size, rank = int(world_size), int(rank)
    if num_sources < 1 or copies < 1:
        raise ValueError(f"need num_sources >= 1 and copies >= 1, got {num_sources}, {copies}")
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank} of {world_size}")
    if even not in (None, "pad", "drop"):
        raise ValueError(f"even must be None, 'pad' or 'drop', got {even!r}")
    if epoch_mode == "copy":
        n, base = num_sources, (epoch % copies) * num_sources
    elif epoch_mode == "all":
        n, base = num_sources * copies, 0
    else:
        raise ValueError(f"epoch_mode must be 'copy' or 'all', got {epoch_mode!r}")
    if shuffle:
        rows = np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, epoch]).permutation(n)
    else:
        rows = np.arange(n, dtype=np.int64)
    rows = rows.astype(np.int64, copy=False) + base
    if world_size == 1:
        return rows
    if even == "pad":
        rows = np.resize(rows, math.ceil(n / world_size) * world_size)  # repeats cyclically
    elif even == "drop":
        rows = rows[: n - n % world_size]
    bounds = np.linspace(0, len(rows), world_size + 1).round().astype(np.int64)
    return rows[bounds[rank] : bounds[rank + 1]]


def batch_slices(n: int, batch_size: int, drop_last: bool = False) -> list[slice]:
    """Slices cutting ``n`` planned rows into batches of ``batch_size`` (last one short unless
    ``drop_last``)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    stop = n - n % batch_size if drop_last else n
    return [slice(i, min(i + batch_size, stop)) for i in range(0, stop, batch_size)]


# --------------------------------------------------------------------------------------------
# One open shard
# --------------------------------------------------------------------------------------------


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


class _ShardMeta:
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
    ) -> None:
        self.path, self.count = path, count
        self.layout: dict[str, list[tuple[int, int, int]]] | None = None
        with _open_h5(path) as f:
            self.identity = _identity(os.stat(path))
            for name in (*image_names, *index_names):
                if name not in f or f[name].shape[0] != count:
                    have = f[name].shape[0] if name in f else "no"
                    raise ShardError(path, f"'{name}' has {have} rows, the entry records {count}")
            self.index = {name: np.asarray(f[name][()], dtype=np.int64) for name in index_names}
            self.shape = tuple(f[image_names[0]].shape[1:])
            if direct:
                size = self.identity[2]
                layouts = {name: _direct_layout(f[name], size) for name in image_names}
                if all(v is not None for v in layouts.values()):
                    self.layout = {k: v for k, v in layouts.items() if v is not None}
                    if not self._direct_matches(f):
                        self.layout = None

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
        shard = _Shard(self)
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


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _open_raw(meta: _ShardMeta) -> int:
    """A file descriptor on ``meta``'s shard, checked to be the file the metadata describes."""
    try:
        fd = os.open(meta.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    except OSError as error:
        raise ShardError(meta.path, f"shard is missing: {one_line(error, 160)}") from None
    if _identity(os.fstat(fd)) != meta.identity:  # cached offsets would point elsewhere
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


class _Shard:
    """One shard opened in this process: a read-only memory map of the file with numpy views
    of its image rows (uncompressed shards), or an h5py handle (compressed shards), plus its
    :class:`_ShardMeta`. Closed when the LRU has dropped it and no read in flight uses it.

    Why a memory map rather than ``os.pread``: a batch is then gathered by a few numpy calls
    (``take``), each releasing the GIL once, instead of one system call, and one GIL release,
    per row. With another busy Python thread in the process (a training loop, tf.data), every
    GIL release can cost a 5 ms switch interval; per-row reads collapsed to ~1,000 images/s
    there while the gather keeps its speed. Shards are never modified in place (writers
    replace them atomically), which is what makes mapping them safe.
    """

    def __init__(self, meta: _ShardMeta) -> None:
        self.meta = meta
        self.path = meta.path
        self.index = meta.index
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
            if _identity(os.stat(meta.path)) != meta.identity:
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

    def read_images(self, name: str, local: np.ndarray, out: np.ndarray, dest: np.ndarray) -> None:
        """Copy rows ``local`` (sorted) of dataset ``name`` into ``out[dest]``."""
        n = len(local)
        if n == 0:
            return
        if self.h5 is not None:
            dset = self.datasets.get(name)
            if dset is None:  # kept open: its chunk cache then serves the next batch too
                dset = self.datasets[name] = self.h5[name]
            self._read_h5(dset, local, out, dest)
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
                if int(rows[-1]) - lo == m - 1:  # consecutive rows: one copy
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


# --------------------------------------------------------------------------------------------
# The reader
# --------------------------------------------------------------------------------------------


def _default_max_open() -> int:
    """A quarter of this process's file-descriptor limit, between 16 and 1024: many shards
    stay open (re-opening costs ~10 us) while leaving room for workers, sockets and logs."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return 128
    if soft == resource.RLIM_INFINITY:
        return 1024
    return max(16, min(1024, soft // 4))


class ShardReader:
    """Random and batched access to an ipmix output, with the epoch/copy logic for training.

    ``path`` is the entry file (``OUT.h5``). Every shard is checked to exist with its recorded
    count and checksum attribute first (:func:`ipmix_cli.shards.check_output`), so a damaged
    output fails here with the shard's name rather than training on zeros.

    What a row or batch holds (``read_batch``, ``reader[i]``, every adapter):
    ``(images, labels, *extras)``.

    * ``views``: image datasets to return. Default: ``("images",)`` for a standard output and
      the JSD triplet ``("clean", "images", "images2")`` for a ``--jsd`` output. With one view
      ``images`` is an array, with several a tuple of arrays in ``views`` order.
    * ``extras``: any of :data:`EXTRAS` (``source_index``, ``copy_index``, ``row``), int64.
    * ``dtype``: ``uint8`` (default; cheapest to read and to send to a GPU) or a float type,
      which scales to [0, 1]; ``normalize=(mean, std)`` (per channel, on the [0, 1] scale, e.g.
      ImageNet's) then subtracts and divides and implies ``float32``.
    * ``channels_first``: (B, 3, H, W) instead of the stored (B, H, W, 3).
    * ``max_open_files``: shards kept open per process (least recently used closed first;
      default a quarter of the file-descriptor limit, at most 1024).
    * ``direct``: read uncompressed shards with positioned reads (fast); ``False`` forces h5py
      (for benchmarks and as an escape hatch).

    Picklable and fork-safe: files are opened on first read in each process.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        views: Sequence[str] | None = None,
        extras: Sequence[str] = (),
        dtype: Any = None,
        normalize: tuple[Sequence[float], Sequence[float]] | None = None,
        channels_first: bool = False,
        max_open_files: int | None = None,
        direct: bool = True,
    ) -> None:
        entry = Path(path).absolute()
        manifest = check_output(entry)  # missing / wrong-count / replaced shard -> ShardError
        self.path = entry
        self.manifest: dict[str, Any] = manifest
        self.mode: str = str(manifest.get("mode", "standard"))
        self.count = int(manifest["count"])
        self.image_shape: tuple[int, int, int] = tuple(int(v) for v in manifest["image_shape"])  # type: ignore[assignment]
        self.class_names: list[str] = [str(c) for c in manifest.get("class_names", [])]
        shards = manifest["shards"]
        self.shard_files: list[str] = [str(entry.parent / s["file"]) for s in shards]
        self.shard_counts = np.array([int(s["count"]) for s in shards], dtype=np.int64)
        self._starts = np.concatenate(([0], np.cumsum(self.shard_counts)[:-1])).astype(np.int64)
        self.copies = int(manifest.get("copies", 1))
        self.num_sources = int(manifest.get("num_sources", self.count // max(self.copies, 1)))
        if self.copies < 1 or self.copies * self.num_sources != self.count:
            raise ShardError(
                entry,
                f"manifest says {self.copies} copies of {self.num_sources} sources, but the "
                f"output holds {self.count} rows",
            )
        available = IMAGE_VIEWS if self.mode == "jsd" else ("images",)
        if views is None:
            views = available
        elif isinstance(views, str):
            views = (views,)
        self.views: tuple[str, ...] = tuple(views)
        bad = [v for v in self.views if v not in available]
        if bad or not self.views:
            raise ValueError(
                f"views {bad or '()'} not available in this {self.mode} output "
                f"(choose from {', '.join(available)})"
            )
        self.extras: tuple[str, ...] = tuple(extras)
        bad = [x for x in self.extras if x not in EXTRAS]
        if bad:
            raise ValueError(f"unknown extras {bad} (choose from {', '.join(EXTRAS)})")
        if dtype is None:
            dtype = np.float32 if normalize is not None else np.uint8
        self.dtype = np.dtype(dtype)
        if self.dtype != np.uint8 and self.dtype.kind != "f":
            raise ValueError(f"dtype must be uint8 or a float type, got {self.dtype}")
        if normalize is not None and self.dtype.kind != "f":
            raise ValueError("normalize needs a float dtype")
        self.normalize = normalize
        self.channels_first = bool(channels_first)
        mean = np.zeros(3) if normalize is None else np.asarray(normalize[0], dtype=np.float64)
        std = np.ones(3) if normalize is None else np.asarray(normalize[1], dtype=np.float64)
        if mean.shape != (3,) or std.shape != (3,) or (std <= 0).any():
            raise ValueError("normalize must be ((m, m, m), (s, s, s)) with s > 0")
        self._scale = (1.0 / (255.0 * std)).astype(np.float32)
        self._bias = (-mean / std).astype(np.float32)
        self.max_open_files = (
            _default_max_open() if max_open_files is None else max(1, int(max_open_files))
        )
        self.direct = bool(direct)
        self._index_names = ("labels", *(x for x in self.extras if x != "row"))
        self._reset_process_state()

    # -- per-process state ---------------------------------------------------------------------

    def _reset_process_state(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._open: OrderedDict[int, _Shard] = OrderedDict()
        self._meta: OrderedDict[int, _ShardMeta] = OrderedDict()
        self._labels: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for key in ("_pid", "_lock", "_open", "_meta", "_labels"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_process_state()

    def _check_process(self) -> None:
        if self._pid != os.getpid():  # forked: never touch the parent's handles
            _INHERITED.append(self._open)
            meta = self._meta  # plain data, no handles: still valid in the child
            self._reset_process_state()
            self._meta = meta

    def _shard_meta(self, index: int) -> _ShardMeta:
        """Shard ``index``'s metadata in this process (read from the file the first time)."""
        with self._lock:
            meta = self._meta.get(index)
            if meta is not None:
                self._meta.move_to_end(index)
                return meta
        meta = _ShardMeta(
            self.shard_files[index],
            int(self.shard_counts[index]),
            self.views,
            self._index_names,
            self.direct,
        )
        with self._lock:
            self._meta[index] = meta
            while len(self._meta) > _META_CACHE:
                self._meta.popitem(last=False)
        return meta

    def _shard(self, index: int, rows: int = _FEW_ROWS + 1) -> _Shard | _ShardMeta:
        """Shard ``index`` opened (mapped) in this process, opening it and closing the least
        recently used one when needed; or, when only ``rows`` <= ``_FEW_ROWS`` rows are wanted
        and every slot is taken, its :class:`_ShardMeta`, to read those rows with ``pread``
        without mapping the file: mapping, touching and unmapping costs ~90 us, far more than a
        few small reads, and evicting a hot shard for a cold one only moves the misses."""
        self._check_process()
        with self._lock:
            shard = self._open.get(index)
            if shard is not None:
                self._open.move_to_end(index)
                return shard
            full = len(self._open) >= self.max_open_files
        meta = self._shard_meta(index)
        if full and rows <= _FEW_ROWS and meta.layout is not None:
            return meta
        shard = _Shard(meta)
        with self._lock:
            other = self._open.get(index)
            if other is not None:  # another thread opened it meanwhile
                return other
            self._open[index] = shard
            while len(self._open) > self.max_open_files:
                self._open.popitem(last=False)  # closed when its last reader lets go
        return shard

    def close(self) -> None:
        """Close this process's files (they re-open on the next read)."""
        if self._pid != os.getpid():
            return
        with self._lock:
            self._open.clear()  # each file closes as soon as no read in flight uses it

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- description -----------------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of rows (``copies * num_sources``); an epoch reads ``num_sources`` of them."""
        return self.count

    def __repr__(self) -> str:
        return (
            f"ShardReader({str(self.path)!r}, {self.count} rows = {self.copies} copies x "
            f"{self.num_sources} sources, {self.mode}, views={self.views})"
        )

    @property
    def num_classes(self) -> int:
        """Number of class names recorded (0 if the input had none)."""
        return len(self.class_names)

    @property
    def item_shape(self) -> tuple[int, int, int]:
        """Shape of one image as returned: (H, W, 3), or (3, H, W) with ``channels_first``."""
        h, w, c = self.image_shape
        return (c, h, w) if self.channels_first else (h, w, c)

    @property
    def labels(self) -> np.ndarray:
        """Every row's label (int64, row order); read once per process, e.g. for class weights."""
        if self._labels is None or self._pid != os.getpid():
            parts = []
            for path in self.shard_files:
                with h5py.File(path, "r") as f:
                    parts.append(np.asarray(f["labels"][()], dtype=np.int64))
            self._labels = np.concatenate(parts)
        return self._labels

    def fields(self) -> list[tuple[str, tuple[int, ...], np.dtype]]:
        """``(name, per-row shape, dtype)`` of each array in a batch, in flat order: the views,
        ``labels``, then the extras (used to declare shapes to tf.data and friends)."""
        out = [(v, self.item_shape, self.dtype) for v in self.views]
        out.append(("labels", (), np.dtype(np.int64)))
        out.extend((x, (), np.dtype(np.int64)) for x in self.extras)
        return out

    # -- reading ---------------------------------------------------------------------------------

    def _rows(self, rows: Any) -> np.ndarray:
        if isinstance(rows, slice):
            return np.arange(*rows.indices(self.count), dtype=np.int64)
        arr = np.asarray(rows)
        if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
            raise TypeError(f"rows must be a 1-D sequence of integers, got {arr.dtype} {arr.shape}")
        arr = arr.astype(np.int64, copy=False)
        if arr.size and (arr.min() < -self.count or arr.max() >= self.count):
            raise IndexError(f"row out of range for {self.count} rows")
        return np.where(arr < 0, arr + self.count, arr)

    def read(self, rows: Any) -> dict[str, np.ndarray]:
        """Rows ``rows`` (sequence of ints, array or slice), as a dict of batch arrays keyed by
        view name, ``labels`` and extras. Order is kept; repeats are allowed."""
        rows = self._rows(rows)
        n = len(rows)
        if n and (np.diff(rows) >= 0).all():
            order = np.arange(n)
            ordered = rows
        else:
            order = np.argsort(rows, kind="stable")
            ordered = rows[order]
        raw = {v: np.empty((n, *self.image_shape), np.uint8) for v in self.views}
        index = {name: np.empty(n, np.int64) for name in self._index_names}
        shard_of = np.searchsorted(self._starts, ordered, side="right") - 1
        local_all = ordered - self._starts[shard_of]
        cut = np.flatnonzero(np.diff(shard_of) != 0) + 1
        starts = np.concatenate(([0], cut)).tolist() if n else []
        ends = np.concatenate((cut, [n])).tolist() if n else []
        for s, e, k in zip(starts, ends, shard_of[starts].tolist(), strict=True):
            shard = self._shard(k, e - s)
            local, dest = local_all[s:e], order[s:e]
            for v in self.views:
                shard.read_images(v, local, raw[v], dest)
            for name in self._index_names:
                index[name][dest] = shard.index[name][local]
        out = {v: self._convert(raw[v]) for v in self.views}
        out["labels"] = index["labels"]
        for x in self.extras:
            out[x] = rows.copy() if x == "row" else index[x]
        return out

    def _convert(self, x: np.ndarray) -> np.ndarray:
        """uint8 (B, H, W, 3) -> requested layout and dtype.

        Floats are made in one multiply-add whose innermost axis is long (a whole image row
        in HWC, a whole plane in CHW): broadcasting a 3-vector over the last axis is 7x slower.
        """
        if self.channels_first:
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        if self.dtype == np.uint8:
            return x
        work = np.float32 if self.dtype.itemsize <= 4 else self.dtype
        rows = x.reshape(len(x), 3, -1) if self.channels_first else x.reshape(-1, x.shape[-2] * 3)
        scale, bias = self._coefficients(rows.shape[-1])
        y = np.multiply(rows, scale, dtype=work)
        y += bias
        y = y.reshape(x.shape)
        return y if y.dtype == self.dtype else y.astype(self.dtype)

    def _coefficients(self, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel scale and bias laid out to broadcast along rows of ``width`` values."""
        if self.channels_first:
            return self._scale.reshape(3, 1), self._bias.reshape(3, 1)
        reps = width // 3
        return np.tile(self._scale, reps), np.tile(self._bias, reps)

    def pack(self, arrays: dict[str, np.ndarray]) -> tuple[Any, ...]:
        """``read`` output -> the ``(images, labels, *extras)`` tuple every adapter yields
        (``images`` is a tuple of arrays when there are several views)."""
        images = (
            arrays[self.views[0]] if len(self.views) == 1 else tuple(arrays[v] for v in self.views)
        )
        return (images, arrays["labels"], *(arrays[x] for x in self.extras))

    def read_batch(self, rows: Any) -> tuple[Any, ...]:
        """``(images, labels, *extras)`` for ``rows``; see :meth:`read`."""
        return self.pack(self.read(rows))

    def __getitem__(self, row: Any) -> tuple[Any, ...]:
        """One row (int) as ``(image(s), label, *extras)`` without a batch axis; a slice or a
        sequence of rows gives a batch."""
        if isinstance(row, (int, np.integer)):
            arrays = self.read([int(row)])
            return self.pack({k: v[0] for k, v in arrays.items()})
        return self.read_batch(row)

    # -- epochs ----------------------------------------------------------------------------------

    def epoch_rows(
        self,
        epoch: int = 0,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        even: Even = None,
        epoch_mode: EpochMode = "copy",
    ) -> np.ndarray:
        """Rows this ``rank`` reads in ``epoch``: :func:`epoch_rows` for this output."""
        return epoch_rows(
            self.num_sources,
            self.copies,
            epoch,
            shuffle=shuffle,
            seed=seed,
            rank=rank,
            world_size=world_size,
            even=even,
            epoch_mode=epoch_mode,
        )

    def batches(
        self,
        batch_size: int,
        epoch: int = 0,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        even: Even = None,
        epoch_mode: EpochMode = "copy",
        drop_last: bool = False,
    ) -> Iterator[tuple[Any, ...]]:
        """Batches ``(images, labels, *extras)`` of one epoch (see :meth:`epoch_rows`).

        Each batch is read with one grouped read per shard; wrap the iterator in
        :func:`prefetch` to overlap reading with training.
        """
        rows = self.epoch_rows(
            epoch,
            shuffle=shuffle,
            seed=seed,
            rank=rank,
            world_size=world_size,
            even=even,
            epoch_mode=epoch_mode,
        )
        for part in batch_slices(len(rows), batch_size, drop_last):
            yield self.read_batch(rows[part])


# --------------------------------------------------------------------------------------------
# Prefetching
# --------------------------------------------------------------------------------------------


_DONE = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetch(iterable: Iterable[Any], size: int = 2) -> Iterator[Any]:
    """Iterate ``iterable`` in a background thread, up to ``size`` items ahead.

    Reading releases the GIL during file I/O, so the next batches are read while the caller
    trains on the current one. Errors are re-raised in the caller; stopping early (``break``,
    garbage collection) stops the thread.
    """
    if size < 1:
        yield from iterable
        return
    items: queue.Queue[Any] = queue.Queue(maxsize=size)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in iterable:
                if not put(item):
                    return
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            put(_Failure(error))
            return
        put(_DONE)

    thread = threading.Thread(target=work, name="ipmix-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
