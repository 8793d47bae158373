"""Writing shards: one complete HDF5 file per shard, under a temporary name until committed.

One file per shard, written under a temporary name then renamed, so a killed run leaves only
complete shards and ``--resume`` can keep them (``shard_is_valid``). Workers write pending
shards; the process that owns the output commits them (fsync, rename), so the waiting on the
disk happens away from the computing.

Image datasets are stored raw ((n, H, W, 3) uint8, chunked, optionally compressed) or coded:
one JPEG or PNG file per row in a variable-length uint8 dataset (:mod:`ipmix_cli.shards.codec`),
with ``codec``, ``quality`` (JPEG) and ``image_shape`` attributes on the dataset. Coded datasets
take no HDF5 filter: the files are compressed already, and deflating them again costs time for
nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ipmix_cli.errors import ConfigError, ShardError
from ipmix_cli.fs.atomic import StagedFile, stage_bytes, write_error
from ipmix_cli.shards.attrs import attr_value, decode_attr
from ipmix_cli.shards.checksum import CHECKSUM_METHOD, CODED_CHECKSUM_METHOD, compute_checksum
from ipmix_cli.shards.codec import (
    BLOB_DTYPE,
    CHUNK_ROWS,
    DEFAULT_QUALITY,
    check_codec,
    check_quality,
    encode_images,
)
from ipmix_cli.shards.direct_rows import chunk_places, create_unwritten, file_pieces
from ipmix_cli.shards.layout import (
    IMAGE_DATASETS,
    INDEX_DATASETS,
    JSD_DATASETS,
    RESERVED_ATTRS,
    SHARD_FORMAT_VERSION,
    SHARD_KIND,
    SHARD_NAME,
    STANDARD_DATASETS,
)
from ipmix_cli.shards.memfile import h5_in_memory, h5_metadata_only
from ipmix_cli.shards.shard_info import ShardInfo

DEFAULT_CHUNK_BYTES = 512 * 1024
"""Target size of one ``images`` chunk: several whole images, big enough for fast sequential
batched reads, small enough to fit h5py's default 1 MiB chunk cache."""

COMPRESSIONS = (None, "none", "lzf", "gzip")


def _check_arrays(path: Path, arrays: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], str]:
    """Validate shard arrays against the format; return normalised arrays and the mode."""
    unknown = set(arrays) - set(STANDARD_DATASETS) - set(JSD_DATASETS)
    if unknown:
        raise ShardError(path, f"unknown shard datasets: {', '.join(sorted(unknown))}")
    missing = [k for k in STANDARD_DATASETS if k not in arrays]
    if missing:
        raise ShardError(path, f"shard arrays lack {', '.join(missing)}")
    jsd = [k for k in JSD_DATASETS if k in arrays]
    if jsd and len(jsd) != len(JSD_DATASETS):
        raise ShardError(path, "JSD shards need both 'clean' and 'images2'")
    mode = "jsd" if jsd else "standard"
    images = np.asarray(arrays["images"])
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ShardError(
            path, f"'images' must be uint8 (n, H, W, 3), got {images.dtype} {images.shape}"
        )
    n = images.shape[0]
    if n == 0:
        raise ShardError(path, "a shard must hold at least one image")
    out: dict[str, np.ndarray] = {"images": np.ascontiguousarray(images)}
    for name in JSD_DATASETS:
        if name in arrays:
            arr = np.asarray(arrays[name])
            if arr.dtype != np.uint8 or arr.shape != images.shape:
                raise ShardError(
                    path,
                    f"'{name}' must be uint8 {images.shape} like 'images', "
                    f"got {arr.dtype} {arr.shape}",
                )
            out[name] = np.ascontiguousarray(arr)
    for name in INDEX_DATASETS:
        arr = np.asarray(arrays[name])
        if arr.shape != (n,) or arr.dtype.kind not in "iu":
            raise ShardError(path, f"'{name}' must be {n} integers, got {arr.dtype} {arr.shape}")
        if arr.min() < 0:
            raise ShardError(path, f"'{name}' has negative values (-1 is reserved for gaps)")
        out[name] = np.ascontiguousarray(arr, dtype=np.int64)
    return out, mode


def _image_chunks(shape: tuple[int, ...], chunk_bytes: int) -> tuple[int, int, int, int]:
    n, h, w, c = shape
    per_chunk = max(1, min(n, chunk_bytes // (h * w * c)))
    return (per_chunk, h, w, c)


@dataclass(frozen=True)
class PendingShard:
    """A complete shard file still under its temporary name (see :func:`write_shard_pending`).

    Small and picklable: a worker process returns it to the parent, which commits it."""

    staged: StagedFile
    info: ShardInfo

    @property
    def tmp(self) -> Path:
        return self.staged.tmp

    @property
    def path(self) -> Path:
        return self.staged.final

    def commit(self) -> ShardInfo:
        """fsync the file, rename it to its final name, fsync the folder; on any failure (an
        interrupt included) the temporary file goes and the final name is left as it was."""
        self.staged.commit()
        return self.info

    def discard(self) -> None:
        self.staged.discard()


def write_shard(
    path: str | os.PathLike[str],
    arrays: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any] | None = None,
    **options: Any,
) -> ShardInfo:
    """Write one shard file atomically and return its :class:`ShardInfo`.

    ``path`` either holds the complete shard afterwards or does not exist; the arguments
    (``index``, ``compression``, ...) are those of :func:`write_shard_pending`.
    """
    return write_shard_pending(path, arrays, attrs, **options).commit()


def write_shard_pending(
    path: str | os.PathLike[str],
    arrays: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any] | None = None,
    *,
    index: int | None = None,
    compression: str | None = None,
    compression_level: int = 4,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    codec: str = "raw",
    quality: int = DEFAULT_QUALITY,
    file_name: str | None = None,
) -> PendingShard:
    """Write one complete shard under a unique temporary name beside ``path``; the returned
    :class:`PendingShard` commits it (fsync, rename) or discards it.

    ``arrays`` holds ``images`` (n, H, W, 3) uint8, ``labels``, ``source_index``, ``copy_index``
    (n,) integers, and for JSD mode also ``clean`` and ``images2`` shaped like ``images``.
    ``attrs`` are extra attributes to store (e.g. a config hash that :func:`shard_is_valid` can
    compare on resume); dicts/lists are stored as JSON strings. ``index`` defaults to the number
    in the file name (``shard-00042.h5`` -> 42). ``compression``: ``None``/``"none"``, ``"lzf"``
    (fast, but needs the LZF filter plugin outside h5py) or ``"gzip"`` (level
    ``compression_level``; readable by every HDF5).

    ``codec``: ``"raw"`` (the default: pixels as they are, byte-identical to shards written
    before codecs existed), ``"jpeg"`` (at ``quality`` 1..100) or ``"png"`` (lossless); a coded
    shard takes no ``compression``. ``file_name`` is what the returned :class:`ShardInfo`
    records as the shard's file (a path relative to the shard folder such as
    ``0001/shard-01000.h5`` for outputs with subfolders); it defaults to ``path``'s name. The
    index is read from ``path``'s own name either way.

    The augment job has its workers write pending shards and commits them in the parent: the
    fsync waits on the disk for ~30 ms a shard, which a worker would otherwise spend idle
    instead of computing the next shard.
    """
    p = Path(path)
    if index is None:
        m = SHARD_NAME.match(p.name)
        if not m:
            raise ShardError(p, "cannot tell the shard index from the name; pass index=")
        index = int(m.group(1))
    if compression not in COMPRESSIONS:
        raise ShardError(p, f"unknown compression {compression!r} (none, lzf or gzip)")
    try:
        codec = check_codec(codec)
        stored_quality = check_quality(quality) if codec == "jpeg" else None
    except ConfigError as error:
        raise ShardError(p, error.problem) from None
    if codec != "raw" and compression not in (None, "none"):
        raise ShardError(p, "--compression applies to raw images only")
    extra = dict(attrs or {})
    clash = RESERVED_ATTRS & set(extra)
    if clash:
        raise ShardError(p, f"reserved shard attributes cannot be set: {', '.join(sorted(clash))}")
    data, mode = _check_arrays(p, arrays)
    n, h, w, _ = data["images"].shape
    if codec == "raw":
        checksum = compute_checksum(data)
    else:
        for name in IMAGE_DATASETS:
            if name in data:
                data[name] = encode_images(data[name], codec, quality)
        checksum = compute_checksum(data, codec=codec, image_shape=(h, w, 3))
    filters: dict[str, Any] = {}
    if compression == "gzip":
        filters = {"compression": "gzip", "compression_opts": int(compression_level)}
    elif compression == "lzf":
        filters = {"compression": "lzf"}
    coding = {"codec": codec, "quality": stored_quality, "image_shape": (h, w, 3)}
    if codec == "raw" and not filters:  # the rows go from the arrays to the file, uncopied
        with h5_metadata_only() as (f, sparse):
            _fill_shard(f, data, filters, chunk_bytes, index, mode, checksum, extra, coding, True)
            places = [(chunk_places(f[k]), data[k]) for k in IMAGE_DATASETS if k in data]
        pieces = file_pieces(sparse.extents, sparse.size, places)
    else:
        with h5_in_memory(sum(map(_stored_bytes, data.values()))) as (f, image):
            _fill_shard(f, data, filters, chunk_bytes, index, mode, checksum, extra, coding, False)
        pieces = [image[0]]
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise write_error(p, error) from None
    staged = stage_bytes(p, pieces)
    stored = {k: decode_attr(attr_value(v)) for k, v in extra.items()}  # as read back
    info = ShardInfo(
        int(index),
        p.name if file_name is None else str(file_name),
        int(n),
        checksum,
        (int(h), int(w)),
        mode,
        stored,
        codec=codec,
        quality=stored_quality,
    )
    return PendingShard(staged, info)


def _stored_bytes(arr: np.ndarray) -> int:
    """About how many bytes ``arr`` takes in the file (for sizing the in-memory image)."""
    if arr.dtype == object:
        return sum(int(row.nbytes) + 16 for row in arr)  # + its global heap reference
    return int(arr.nbytes)


def _fill_shard(
    f: h5py.File,
    data: Mapping[str, np.ndarray],
    filters: Mapping[str, Any],
    chunk_bytes: int,
    index: int,
    mode: str,
    checksum: str,
    extra: Mapping[str, Any],
    coding: Mapping[str, Any],
    direct: bool,
) -> None:
    """Make the shard's datasets and attributes in ``f``; ``direct``: leave the raw image
    datasets' chunks unwritten, for :func:`~ipmix_cli.shards.direct_rows.file_pieces`."""
    n = data["images"].shape[0]
    coded = coding["codec"] != "raw"
    for name in (*IMAGE_DATASETS, *INDEX_DATASETS):
        if name not in data:
            continue
        arr = data[name]
        if name in IMAGE_DATASETS and coded:
            # (``data=`` writes the rows as they are: h5py 3.16's ``dataset[...] = rows``
            # turns rows of equal length into a 2-D array and refuses them)
            rows = np.asarray(arr, dtype=BLOB_DTYPE)
            dataset = f.create_dataset(
                name, data=rows, dtype=BLOB_DTYPE, chunks=(min(CHUNK_ROWS, n),)
            )
            dataset.attrs["codec"] = coding["codec"]
            if coding["quality"] is not None:
                dataset.attrs["quality"] = int(coding["quality"])
            dataset.attrs["image_shape"] = np.array(coding["image_shape"], dtype=np.int64)
        elif name in IMAGE_DATASETS and direct:
            dataset = create_unwritten(f, name, arr.shape, _image_chunks(arr.shape, chunk_bytes))
        elif name in IMAGE_DATASETS:
            chunks = _image_chunks(arr.shape, chunk_bytes)
            dataset = f.create_dataset(name, data=arr, chunks=chunks, **filters)
        else:
            dataset = f.create_dataset(name, data=arr)
        # Where HDF5 places a chunk must not depend on when the Python object is freed
        # (a profiler thread holding it moved the chunk to file close): flush it now.
        dataset.flush()
    f.attrs["kind"] = SHARD_KIND
    f.attrs["format_version"] = SHARD_FORMAT_VERSION
    f.attrs["shard_index"] = int(index)
    f.attrs["count"] = int(n)
    f.attrs["mode"] = mode
    f.attrs["checksum"] = checksum
    f.attrs["checksum_method"] = CODED_CHECKSUM_METHOD if coded else CHECKSUM_METHOD
    for key, value in extra.items():
        f.attrs[key] = attr_value(value)
