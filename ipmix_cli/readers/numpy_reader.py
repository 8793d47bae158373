"""The numpy reader behind every framework adapter: :class:`ShardReader`.

It reads an ``ipmix augment`` output (``docs/format.md``) for training. Design choices and why:

* **Checked before use.** The constructor runs :func:`ipmix_cli.shards.check_output`, so a
  missing shard or one with the wrong count is an error, never a run of zero images (HDF5
  fills a virtual dataset's missing source silently), and so is a manifest whose shard
  counts, starts or copies do not add up (:func:`ipmix_cli.shards.manifest.manifest_faults`),
  which would map rows to the wrong shard.
* **Shard files, not the virtual dataset.** Batches are split by shard and read from the shard
  files (:mod:`ipmix_cli.readers.shard_io`): memory-mapped for uncompressed shards, through
  h5py for compressed ones. Reading shuffled batches through the entry's virtual dataset is
  ~100x slower.
* **Nothing open is shared.** Files are opened lazily, per process, on first use; the pid is
  checked on every read so a handle inherited through ``fork`` (PyTorch workers) is never used,
  and pickling drops every handle (``spawn`` workers, grain, Ray re-open). At most
  ``max_open_files`` shards are open at once (least recently used closed first), so an output
  with thousands of shards stays within file-descriptor and memory limits.
* **Epochs pick copies.** :meth:`ShardReader.plan` gives the output's
  :class:`~ipmix_cli.readers.plan.EpochPlan`: epoch ``e`` reads copy ``e % copies``.
* **Thread safe.** The table of open shards is guarded by a lock; reads hold a reference to
  their shard, so one thread closing a shard (LRU) never pulls a file from under another.
* **Coded shards decode transparently.** JPEG or PNG rows (``--codec``) come back as the same
  (B, H, W, 3) uint8 batches as raw ones. A batch's coded rows are gathered from all its
  shards first and then decoded together in ``decode_threads`` threads (Pillow releases the
  GIL while decoding): with a shuffled batch most shards give a row or two, too few to spread
  over threads shard by shard.
* **Outputs in buckets read like local ones.** An ``s3://`` entry (or an
  :class:`~ipmix_cli.remote.url.ObjectURL`) is fetched into a local cache, and so is each shard,
  whole, on first use: verified against the entry's record (size and checksum), evicted least
  recently used past ``cache_limit``, then memory-mapped as a local shard is
  (:mod:`ipmix_cli.remote.cache`). The next shards of an epoch are fetched in the background
  (``batches``, the samplers and the tf/JAX adapters say which), so a warm cache reads as fast
  as a local output and a cold one about as fast as the network.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ipmix_cli.errors import ShardError
from ipmix_cli.readers.plan import EpochPlan, batch_slices, start_batch_of
from ipmix_cli.readers.shard_io import FEW_ROWS, OpenShard, ShardMeta
from ipmix_cli.remote.url import ObjectURL, is_remote
from ipmix_cli.shards import Manifest, check_output
from ipmix_cli.shards.codec import BlobDecodeError, decode_into, default_decode_threads

__all__ = ["EXTRAS", "IMAGE_VIEWS", "ShardReader"]

IMAGE_VIEWS = ("clean", "images", "images2")
"""Image datasets a reader can return; ``clean`` and ``images2`` exist in JSD outputs only."""

EXTRAS = ("source_index", "copy_index", "row")
"""Optional per-row values after the labels: the input row, the copy, and the output row."""


_CodedPart = tuple[np.ndarray, np.ndarray, int, np.ndarray, str]
"""One shard's share of a batch's coded rows: blobs, destinations in the batch, shard index,
rows in the shard, codec."""

_META_CACHE = 8192  # shards whose metadata a process keeps (labels: 8 bytes a row)
_INHERITED: list[Any] = []  # handles inherited through fork: kept alive, never used or closed


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

    ``path`` may also be an entry object in a bucket, ``"s3://bucket/run/OUT.h5"`` or an
    :class:`~ipmix_cli.remote.url.ObjectURL` (credentials and ``AWS_ENDPOINT_URL`` as for the aws
    CLI). The entry is fetched and every shard object checked to be there at its recorded size
    (one listing); shards are then fetched whole, on first use, into a local cache shared by
    processes (DataLoader workers download each shard once), verified against the entry's
    record (size and checksum: a corrupt object is an error naming it, never cached), evicted
    least recently used, and read exactly as local shards (:mod:`ipmix_cli.remote.cache`).

    * ``cache_dir``: the cache folder (default ``$IPMIX_CACHE_DIR``, else
      ``~/.cache/ipmix/s3``); ``cache_limit``: bytes the folder may hold (default 80 % of the
      free space there when the reader opens, plus what it holds already); a limit smaller
      than the largest shard is refused. A shuffled epoch reads rows of every shard of its
      copy, so give the cache room for one copy of the output (``count / copies`` rows), or
      shards are fetched again and again. Both are ignored for a local output.
    * The next shards of an epoch are fetched in background threads while the current ones
      are read: :meth:`batches` and the adapters' samplers and datasets tell the reader their
      plan (:meth:`prefetch`); reads with rows from elsewhere fetch a batch's missing shards
      in parallel when it needs them. Each rank fetches only the shards its rows need.

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
    * ``decode_threads``: threads decoding a batch of a coded (JPEG/PNG) output; default
      ``min(4, cores)``; 1 decodes in the calling thread. Raw outputs ignore it.

    Picklable and fork-safe: files are opened on first read in each process (and for an output
    in a bucket, each process makes its own connection and prefetch threads).
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
        decode_threads: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        cache_limit: int | None = None,
    ) -> None:
        self._remote: Any = None  # RemoteShards of an output in a bucket
        self._plan_hint: tuple[EpochPlan, Any] | None = None  # a sampler's plan and pass cell
        entry: Path | ObjectURL
        if is_remote(path):
            from ipmix_cli.remote.cache import open_remote

            entry = ObjectURL.parse(path)  # type: ignore[arg-type]
            manifest, self._remote = open_remote(entry, cache_dir, cache_limit)
            self.shard_files: list[str] = [str(u) for u in self._remote.urls]
            """Each shard's file (for an output in a bucket: its ``s3://`` URL)."""
        else:
            entry = Path(path).absolute()
            manifest = check_output(entry)  # missing / wrong-count / replaced shard: ShardError
            self.shard_files = [str(entry.parent / f) for f in manifest.shard_files]
        self.path = entry
        self.manifest: Manifest = manifest
        self.mode: str = manifest.mode
        self.count = manifest.count
        self.image_shape: tuple[int, int, int] = manifest.image_shape
        self.class_names: list[str] = list(manifest.class_names)
        self.class_labels: list[str] = list(manifest.class_labels or manifest.class_names)
        """Human label per class id: from a ``--classes`` map that gave them, else the names."""
        self.shard_counts = np.array(manifest.shard_counts, dtype=np.int64)
        self._starts = np.concatenate(([0], np.cumsum(self.shard_counts)[:-1])).astype(np.int64)
        # ``read_manifest`` (under check_output and open_remote) has refused a manifest whose
        # shard counts, starts or copies x sources do not add up to its rows, so the shard
        # table and the epoch plan below can trust these numbers
        self.copies = manifest.copies
        self.num_sources = manifest.num_sources
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
        if self._remote is not None:  # an evicted shard's disk space is freed once unmapped
            fit = self._remote.cache.limit // max(1, self._remote.largest)
            self.max_open_files = max(1, min(self.max_open_files, fit))
        self.direct = bool(direct)
        if decode_threads is not None and (
            isinstance(decode_threads, bool) or int(decode_threads) < 1
        ):
            raise ValueError(f"decode_threads must be at least 1, got {decode_threads!r}")
        self.decode_threads = (
            default_decode_threads() if decode_threads is None else int(decode_threads)
        )
        self.codec: str = manifest.codec
        self._index_names = ("labels", *(x for x in self.extras if x != "row"))
        self._reset_process_state()

    # -- per-process state ---------------------------------------------------------------------

    def _reset_process_state(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._open: OrderedDict[int, OpenShard] = OrderedDict()
        self._meta: OrderedDict[int, ShardMeta] = OrderedDict()
        self._labels: np.ndarray | None = None
        self._hint_pass: int | None = None  # the sampler pass whose shards are prefetched
        self._scheduled: list[Any] = []  # the last few epochs given to prefetch_epoch

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for key in ("_pid", "_lock", "_open", "_meta", "_labels", "_hint_pass", "_scheduled"):
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

    def _shard_meta(self, index: int) -> ShardMeta:
        """Shard ``index``'s metadata in this process (read from the file the first time)."""
        if self._remote is not None:
            return self._remote.open(index, lambda path: self._cached_meta(index, path))
        with self._lock:
            meta = self._meta.get(index)
            if meta is not None:
                self._meta.move_to_end(index)
                return meta
        meta = ShardMeta(
            self.shard_files[index],
            int(self.shard_counts[index]),
            self.views,
            self._index_names,
            self.direct,
            recorded=self._recorded(index),
        )
        with self._lock:
            self._meta[index] = meta
            while len(self._meta) > _META_CACHE:
                self._meta.popitem(last=False)
        return meta

    def _recorded(self, index: int) -> tuple[int, str]:
        """The entry's record of shard ``index`` that its own attributes must match."""
        record = self.manifest.shards[index]
        return record.index, record.checksum

    def _cached_meta(self, index: int, path: Path) -> ShardMeta:
        """The metadata of the cached copy ``path`` of remote shard ``index``: parsed afresh
        when the copy is not the file the metadata describes (evicted and fetched again)."""
        with self._lock:
            meta = self._meta.get(index)
        if meta is None or not meta.is_current():
            meta = ShardMeta(
                str(path),
                int(self.shard_counts[index]),
                self.views,
                self._index_names,
                self.direct,
                cached_copy=True,
                recorded=self._recorded(index),
            )
        with self._lock:
            self._meta[index] = meta
            self._meta.move_to_end(index)
            while len(self._meta) > _META_CACHE:
                self._meta.popitem(last=False)
        return meta

    def _shard(self, index: int, rows: int = FEW_ROWS + 1) -> OpenShard | ShardMeta:
        """Shard ``index`` opened (mapped) in this process, opening it and closing the least
        recently used one when needed; or, when only ``rows`` <= ``FEW_ROWS`` rows are wanted
        and every slot is taken, its :class:`ShardMeta`, to read those rows with ``pread``
        without mapping the file: mapping, touching and unmapping costs ~90 us, far more than a
        few small reads, and evicting a hot shard for a cold one only moves the misses."""
        self._check_process()
        with self._lock:
            shard = self._open.get(index)
            if shard is not None:
                self._open.move_to_end(index)
                return shard
            full = len(self._open) >= self.max_open_files
        if self._remote is not None:  # mapped while the cached copy is locked: never evicted
            shard = self._remote.open(  # between the look-up and the map
                index, lambda path: OpenShard(self._cached_meta(index, path))
            )
        else:
            meta = self._shard_meta(index)
            if full and rows <= FEW_ROWS and meta.layout is not None:
                return meta
            shard = OpenShard(meta)
        with self._lock:
            other = self._open.get(index)
            if other is not None:  # another thread opened it meanwhile
                return other
            self._open[index] = shard
            while len(self._open) > self.max_open_files:
                self._open.popitem(last=False)  # closed when its last reader lets go
        return shard

    def close(self) -> None:
        """Close this process's files (they re-open on the next read) and, for an output in a
        bucket, stop prefetching (downloads in flight finish in the background)."""
        if self._pid != os.getpid():
            return
        with self._lock:
            self._open.clear()  # each file closes as soon as no read in flight uses it
        if self._remote is not None:
            self._remote.close()

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
            self._check_process()
            parts = []
            if self._remote is not None:
                # the entry's `labels` is a virtual dataset over the shards (no data of its
                # own), so every shard is fetched (in the background, in order); the shards
                # are what training reads next anyway, and their metadata stays parsed
                self._remote.schedule(range(len(self.shard_files)))
                for k in range(len(self.shard_files)):
                    parts.append(self._shard_meta(k).index["labels"].copy())
            else:
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
        coded: dict[str, list[_CodedPart]] = {}
        shards = shard_of[starts].tolist()
        if self._remote is not None:
            self._remote_reading(shards)
        for s, e, k in zip(starts, ends, shards, strict=True):
            shard = self._shard(k, e - s)
            local, dest = local_all[s:e], order[s:e]
            for v in self.views:
                if shard.codecs[v] == "raw":
                    shard.read_images(v, local, raw[v], dest)
                else:  # decoded below, with the coded rows of every other shard
                    blobs = shard.read_blobs(v, local)  # type: ignore[union-attr]
                    coded.setdefault(v, []).append((blobs, dest, k, local, shard.codecs[v]))
            for name in self._index_names:
                index[name][dest] = shard.index[name][local]
        for v, parts in coded.items():
            self._decode(v, parts, raw[v])
        out = {v: self._convert(raw[v]) for v in self.views}
        out["labels"] = index["labels"]
        for x in self.extras:
            out[x] = rows.copy() if x == "row" else index[x]
        return out

    def _decode(
        self,
        view: str,
        parts: list[_CodedPart],
        out: np.ndarray,
    ) -> None:
        """Decode the coded rows ``parts`` (blobs, destinations, shard, local rows and codec,
        per shard) of one view into ``out`` in the thread pool; a row that does not decode is
        reported with its shard file and row."""
        blobs = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        dest = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
        codecs = {p[4] for p in parts}
        codec = codecs.pop() if len(codecs) == 1 else None  # None: Pillow tries JPEG, then PNG
        try:
            decode_into(blobs, out, dest, self.decode_threads, codec)
        except BlobDecodeError as error:
            ends = np.cumsum([len(p[0]) for p in parts])
            which = int(np.searchsorted(ends, error.position, side="right"))
            _, _, k, local, _ = parts[which]
            row = int(local[error.position - (int(ends[which - 1]) if which else 0)])
            raise ShardError(self.shard_files[k], f"'{view}' row {row} {error.problem}") from None

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

    # -- prefetch (outputs in buckets) -----------------------------------------------------------

    @property
    def remote(self) -> bool:
        """Whether the output is in a bucket (read through the shard cache)."""
        return self._remote is not None

    @property
    def cache(self) -> Any:
        """The :class:`~ipmix_cli.remote.cache.ShardCache` of an output in a bucket, else
        ``None``."""
        return None if self._remote is None else self._remote.cache

    def prefetch(self, rows: Any, *, shuffled: bool | None = None) -> None:
        """Say which rows come next, in reading order: for an output in a bucket their shards
        are fetched in background threads in the order the rows first touch them, a bounded
        number of bytes ahead of the shards being read (this replaces the previous plan).
        A no-op for a local output. ``batches`` and the adapters call it for their plans."""
        if self._remote is None:
            return
        from ipmix_cli.remote.cache import first_touch

        self._check_process()
        rows = self._rows(rows)
        shard_of = np.searchsorted(self._starts, rows, side="right") - 1
        order = first_touch(shard_of)
        if shuffled is None:
            shuffled = len(rows) > 1 and not bool((np.diff(rows) >= 0).all())
        self._remote.warn_if_too_small(order, shuffled)
        self._remote.schedule(order, list(self._open))

    def prefetch_epoch(
        self, plan: EpochPlan, epoch: int, start: int = 0, *, force: bool = False
    ) -> None:
        """:meth:`prefetch` of ``plan``'s rows of ``epoch`` from row ``start`` on, once: calls
        for an epoch given lately are no-ops (adapters that see single batches call this on
        every batch), unless ``force`` (a new pass over the epoch begins)."""
        if self._remote is None:
            return
        self._check_process()
        key = (plan, int(epoch), int(start))
        if key in self._scheduled and not force:
            return
        self._scheduled = [*self._scheduled[-3:], key]
        self.prefetch(plan.rows(int(epoch))[int(start) :], shuffled=plan.shuffle)

    def follow(self, plan: EpochPlan, passes: Any) -> None:
        """Prefetch for a sampler that runs in another process (a DataLoader's main process):
        ``passes`` is shared memory the sampler writes at the start of each pass, read with
        ``passes.get(i)``: 0 a pass counter, 1 the epoch, 2 its first row. Each reading
        process then prefetches the rows of the pass in progress."""
        self._plan_hint = (plan, passes)

    def _remote_reading(self, shards: list[int]) -> None:
        """Before a batch of a remote output reads ``shards``: follow a sampler's pass, move
        the prefetch past these shards and fetch the missing ones in parallel."""
        self._check_process()
        hint = self._plan_hint
        if hint is not None:
            plan, passes = hint
            number = passes.get(0)
            if number != self._hint_pass:
                self._hint_pass = number
                if number > 0:
                    self.prefetch_epoch(plan, passes.get(1), passes.get(2), force=True)
        opened = self._open
        self._remote.reading(shards, [k for k in shards if k not in opened])

    @property
    def data_identity(self) -> str:
        """A short digest of what the output holds (its shards' data checksums, in order): a
        saved training position is only valid for these rows. An output made again with the
        same seed and options has the same identity, another seed or input another."""
        digest = hashlib.sha256("\n".join(s.checksum for s in self.manifest.shards).encode())
        return digest.hexdigest()[:16]

    # -- epochs ----------------------------------------------------------------------------------

    def plan(self, **options: Any) -> EpochPlan:
        """This output's :class:`~ipmix_cli.readers.plan.EpochPlan` with ``options`` (``shuffle``,
        ``seed``, ``rank``, ``world_size``, ``even``, ``epoch_mode``)."""
        return EpochPlan(self.num_sources, self.copies, **options)

    def epoch_rows(self, epoch: int = 0, **options: Any) -> np.ndarray:
        """Rows this rank reads in ``epoch`` (see :meth:`plan` for the options)."""
        return self.plan(**options).rows(epoch).copy()

    def batches(
        self,
        batch_size: int,
        epoch: int = 0,
        *,
        start_batch: int = 0,
        drop_last: bool = False,
        **options: Any,
    ) -> Iterator[tuple[Any, ...]]:
        """Batches ``(images, labels, *extras)`` of one epoch (see :meth:`plan` for the
        options).

        ``start_batch`` resumes a preempted epoch at that batch (the number consumed before).
        Each batch is read with one grouped read per shard; wrap the iterator in
        :func:`~ipmix_cli.readers.readahead.prefetch` to overlap reading with training.
        """
        plan = self.plan(**options)
        rows = plan.rows(epoch)
        parts = batch_slices(len(rows), batch_size, drop_last)
        parts = parts[start_batch_of(start_batch, len(parts)) :]
        if parts:
            self.prefetch_epoch(plan, epoch, parts[0].start, force=True)  # bucket outputs
        for part in parts:
            yield self.read_batch(rows[part])
