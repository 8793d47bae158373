"""Shard checksums: what they cover, how they are computed, and recomputed from a file.

Every shard carries a CRC-32 checksum of its datasets (also recorded in the entry manifest), so
``verify`` catches bit rot, truncation and accidental edits. CRC-32 rather than a cryptographic
hash: this guards against corruption, not an attacker, at a third of the cost. The recipe
(:data:`CHECKSUM_METHOD`) is stored in every shard and in ``docs/format.md``.

The checksum covers the bytes a shard stores. For a raw image dataset those are its pixels; for
a coded one (``jpeg``, ``png``: one file per row, see :mod:`ipmix_cli.shards.codec`) they are
the encoded rows, each preceded by its length so that moving a byte from one row to the next
changes the sum: ``"<name> <codec> <n>,<H>,<W>,3\\n"``, then for each row in order its length
as 8 little-endian bytes followed by its bytes (:data:`CODED_CHECKSUM_METHOD`). Hashing the
stored bytes rather than decoded pixels keeps ``verify`` as fast as a read and makes the sum
independent of the decoder.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import deflate
import h5py
import numpy as np

from ipmix_cli.errors import ShardError, one_line
from ipmix_cli.shards.codec import CODED, dataset_codec, dataset_image_shape, is_coded

CHECKSUM_ORDER = ("images", "clean", "images2", "labels", "source_index", "copy_index")
"""Order in which datasets enter a shard checksum (absent ones are left out)."""

CHECKSUM_METHOD = (
    "crc32 (zlib's CRC-32, as in gzip and PNG), stored as 'crc32:' and 8 lower-case hex digits; "
    "for each dataset present, in the order images, clean, images2, labels, source_index, "
    "copy_index: the ASCII line '<name> <dtype> <d0>,<d1>,...\\n' then the raw C-order "
    "little-endian bytes"
)
CODED_CHECKSUM_METHOD = (
    CHECKSUM_METHOD + "; a coded image dataset (jpeg, png: one file per row) enters as the "
    "line '<name> <codec> <n>,<H>,<W>,3\\n' then, for each row in order, its length as 8 "
    "little-endian bytes and its bytes"
)
"""The recipe stored in shards with coded image datasets (raw shards keep
:data:`CHECKSUM_METHOD`, so their files are unchanged)."""

_HASH_BLOCK_BYTES = 64 * 1024 * 1024
_CODED_BLOCK_ROWS = 1024  # coded rows read at once when re-hashing a file (~10 MB of JPEG)


def _dtype_name(dtype: np.dtype) -> str:
    return "uint8" if np.dtype(dtype) == np.uint8 else "int64"


def _header(name: str, dtype: np.dtype, shape: Sequence[int]) -> bytes:
    return f"{name} {_dtype_name(dtype)} {','.join(str(int(s)) for s in shape)}\n".encode("ascii")


def _le(block: np.ndarray) -> np.ndarray:
    """The bytes to hash, as a flat uint8 view (no copy for contiguous little-endian data:
    copying each shard with ``tobytes`` cost as much as hashing it)."""
    if block.dtype.kind == "i":
        block = block.astype("<i8", copy=False)
    return np.ascontiguousarray(block).reshape(-1).view(np.uint8)


class _Crc32:
    """A running CRC-32 with hashlib's interface.

    Why CRC-32 rather than sha256: the checksum guards against corruption (truncation, bit
    rot, a bad copy), not against tampering, and sha256 cost 7% of the whole 32 px job (and
    twice as long in ``verify``); every language has CRC-32. It is computed by libdeflate
    (carry-less multiplication: ~15 GB/s here, against ~2.5 GB/s for zlib's), which gives
    zlib's values exactly."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: Any) -> None:
        self.value = deflate.crc32(data, self.value)

    def hexdigest(self) -> str:
        return f"{self.value:08x}"


_HASHERS: dict[str, Callable[[], Any]] = {"crc32": _Crc32, "sha256": hashlib.sha256}
"""Checksum methods by the prefix of a stored checksum; sha256 verifies shards written before
the switch to crc32 (format version 1 allows either)."""


def _hasher(method: str) -> Any:
    try:
        return _HASHERS[method]()
    except KeyError:
        raise ValueError(f"unknown checksum method {method!r}") from None


def method_of(checksum: str) -> str:
    return checksum.split(":", 1)[0] if ":" in checksum else ""


def _coded_header(name: str, codec: str, rows: int, image_shape: Sequence[int]) -> bytes:
    dims = ",".join(str(int(v)) for v in (rows, *image_shape))
    return f"{name} {codec} {dims}\n".encode("ascii")


def _update_rows(digest: Any, rows: Sequence[Any]) -> None:
    """Each coded row as its length (8 bytes, little-endian) then its bytes."""
    for row in rows:
        data = np.ascontiguousarray(row, dtype=np.uint8).reshape(-1)
        digest.update(struct.pack("<Q", data.size))
        digest.update(data)


def compute_checksum(
    arrays: Mapping[str, np.ndarray],
    method: str = "crc32",
    *,
    codec: str = "raw",
    image_shape: Sequence[int] | None = None,
) -> str:
    """Checksum of in-memory shard arrays: ``"crc32:<hex>"`` (recipe: :data:`CHECKSUM_METHOD`).

    With ``codec`` ``"jpeg"`` or ``"png"`` the image datasets in ``arrays`` are object arrays of
    encoded rows (:func:`ipmix_cli.shards.codec.encode_images`) of images ``image_shape``
    (H, W, 3), hashed as :data:`CODED_CHECKSUM_METHOD` says."""
    if codec != "raw" and (codec not in CODED or image_shape is None):
        raise ValueError(f"a {codec!r} checksum needs a known codec and the image shape")
    digest = _hasher(method)
    for name in CHECKSUM_ORDER:
        if name not in arrays:
            continue
        arr = np.asarray(arrays[name])
        if arr.dtype == object:
            if codec == "raw":
                raise ValueError(f"'{name}' holds encoded rows; pass codec= and image_shape=")
            digest.update(_coded_header(name, codec, len(arr), image_shape))  # type: ignore[arg-type]
            _update_rows(digest, arr)
        else:
            digest.update(_header(name, arr.dtype, arr.shape))
            digest.update(_le(arr))
    return f"{method}:{digest.hexdigest()}"


def file_checksum(f: h5py.File, method: str = "crc32") -> str:
    """Recompute the checksum of an open shard from its stored datasets, raw or coded (the
    same bytes :func:`compute_checksum` saw when it was written), reading in bounded blocks."""
    digest = _hasher(method)
    for name in CHECKSUM_ORDER:
        if name not in f:
            continue
        dset = f[name]
        n = dset.shape[0]
        if is_coded(dset):
            digest.update(_coded_header(name, dataset_codec(dset), n, dataset_image_shape(dset)))
            step = _CODED_BLOCK_ROWS
            if dset.chunks:
                step = max(dset.chunks[0], step - step % dset.chunks[0])
            for start in range(0, n, step):
                _update_rows(digest, dset[start : start + step])
            continue
        digest.update(_header(name, dset.dtype, dset.shape))
        row = max(1, int(np.prod(dset.shape[1:], dtype=np.int64)) * dset.dtype.itemsize)
        step = max(1, _HASH_BLOCK_BYTES // row)
        if dset.chunks:
            step = max(dset.chunks[0], step - step % dset.chunks[0])
        for start in range(0, n, step):
            digest.update(_le(dset[start : start + step]))
    return f"{method}:{digest.hexdigest()}"


def shard_checksum(path: str | os.PathLike[str], method: str | None = None) -> str:
    """Recompute a shard file's checksum from its data (streams in 64 MiB blocks), by
    ``method`` or else by the method of the checksum the shard stores."""
    p = Path(path)
    try:
        with h5py.File(p, "r") as f:
            stored = f.attrs.get("checksum", b"")
            stored = stored.decode() if isinstance(stored, bytes) else str(stored)
            return file_checksum(f, method or method_of(stored) or "crc32")
    except (OSError, KeyError, ValueError) as error:
        raise ShardError(p, f"unreadable (truncated or corrupt): {one_line(error, 160)}") from None
