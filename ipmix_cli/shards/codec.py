"""Image codecs of shard datasets: ``raw`` uint8 arrays, or one JPEG or PNG file per row.

Why codecs: raw 224 px images cost 147 KiB each, so an ImageNet-sized output with a few copies
runs into terabytes; JPEG at quality 90 stores photo-like images in ~1/16 of that and decodes
at thousands of images per second. A coded image dataset holds one variable-length byte string
per row (``h5py.vlen_dtype(np.uint8)``): each row is a complete JPEG or PNG file, so any
language with HDF5 and an image library reads it (``docs/format.md``, "Codecs").

Why Pillow for both: Pillow 13's wheels bundle libjpeg-turbo, which encodes and decodes as fast
as dedicated bindings here and is already a dependency. The bytes of a coded row are a pure
function of the pixels, the quality and the library versions (recorded in the manifest's
``environment``): every encoder option is spelled out in :func:`encode_one`, and
libjpeg-turbo's SIMD paths give the same bytes as its plain C ones (a test runs the encoder
with ``JSIMD_FORCENONE=1``), so the bytes do not depend on the CPU either.

Decoding a batch uses a small thread pool: Pillow's decoders release the GIL while they run.
Measured on two cores (``ShardReader``, shuffled batches of 256, 224 px, JPEG q90): one thread
~2,400 images/s, two ~3,300 (1.3-1.4x; bare decoding alone scaled 1.6x). When other processes
keep a core busy the gain goes, and two threads can then be slower than one: the GIL handoffs
cost more than the second thread brings, so ``decode_threads=1`` is the setting for a machine
whose cores are all taken by data-loader workers.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import h5py
import numpy as np
from PIL import Image

from ipmix_cli.bank.png import encode_rgb_png
from ipmix_cli.cores import available_cores
from ipmix_cli.errors import ConfigError, one_line
from ipmix_cli.sources.fast_jpeg import decode_simple_jpeg

CODECS = ("raw", "jpeg", "png")
"""How an image dataset may be stored: ``raw`` (n, H, W, 3) uint8, or one file per row."""

CODED = ("jpeg", "png")
"""The codecs that store one variable-length byte string per row."""

DEFAULT_QUALITY = 90
"""JPEG quality when none is given: at 224 px on photo-like content (smooth gradients plus
mild noise) it keeps a PSNR of ~36 dB at 1/16 of the raw size (9.2 KB against 147 KiB); quality
75 halves the bytes again (4.3 KB) for little further loss (35.7 dB there)."""

PNG_LEVEL = 6
"""zlib level of PNG rows. Measured on 224 px photo-like images (smooth gradients plus mild
noise) with ``encode_rgb_png`` (no row filter): levels 1, 6 and 9 give 136.7, 136.6 and
136.6 KB at 4.1 ms each, so the level hardly matters there; on smoother content level 6 saves
2% over level 1 for 10% more time, and 9 gains nothing over 6. Six is zlib's own default."""

CHUNK_ROWS = 64
"""Rows per chunk of a coded dataset. A chunk holds 16-byte references into HDF5's global heap,
not the bytes themselves, so this only sets how many references one read brings in: 64 keeps
the chunk index small without making a one-row read fetch much."""

BLOB_DTYPE = h5py.vlen_dtype(np.uint8)
"""The HDF5 type of a coded image dataset: a variable-length sequence of uint8 per row."""

_FORMATS = {"jpeg": "JPEG", "png": "PNG"}


def check_codec(codec: Any) -> str:
    """``codec`` if it is one of :data:`CODECS`, else a one-line :class:`ConfigError`."""
    if not isinstance(codec, str) or codec not in CODECS:
        raise ConfigError(f"unknown image codec {codec!r} (choose {', '.join(CODECS)})")
    return codec


def check_quality(quality: Any) -> int:
    """``quality`` if it is an integer from 1 to 100 (JPEG's scale), else a one-line
    :class:`ConfigError`. (libjpeg clamps out-of-range values silently; we refuse them.)"""
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)):
        raise ConfigError(f"JPEG quality must be an integer from 1 to 100, got {quality!r}")
    if not 1 <= int(quality) <= 100:
        raise ConfigError(f"JPEG quality must be from 1 to 100, got {int(quality)}")
    return int(quality)


def encode_one(image: np.ndarray, codec: str, quality: int = DEFAULT_QUALITY) -> bytes:
    """One (H, W, 3) uint8 image as a complete JPEG or PNG file.

    Every JPEG option is given explicitly (they are Pillow 13's defaults: 4:2:0 chroma
    subsampling, baseline Huffman tables, no progressive scan, no smoothing, no markers beyond
    JFIF), so the bytes stay a pure function of the pixels, ``quality`` and the library
    version even if a later Pillow changed a default."""
    if codec == "jpeg":
        buffer = io.BytesIO()
        Image.fromarray(image, "RGB").save(
            buffer,
            "JPEG",
            quality=int(quality),
            subsampling=2,  # 4:2:0
            optimize=False,
            progressive=False,
            smooth=0,
            keep_rgb=False,
            streamtype=0,
            dpi=(0, 0),
            restart_marker_blocks=0,
            restart_marker_rows=0,
            qtables=None,
            exif=b"",
        )
        return buffer.getvalue()
    if codec == "png":
        return encode_rgb_png(image, PNG_LEVEL)
    raise ConfigError(f"codec {codec!r} does not encode rows (choose {', '.join(CODED)})")


def encode_images(images: np.ndarray, codec: str, quality: int = DEFAULT_QUALITY) -> np.ndarray:
    """(n, H, W, 3) uint8 images -> object array of n uint8 arrays, row ``i`` the file of
    image ``i``: the form h5py writes into a :data:`BLOB_DTYPE` dataset."""
    check_codec(codec)
    if codec == "jpeg":
        check_quality(quality)
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"images must be uint8 (n, H, W, 3), got {images.dtype} {images.shape}")
    out = np.empty(len(images), dtype=BLOB_DTYPE)  # an object array that h5py knows as vlen
    for i, image in enumerate(images):
        out[i] = np.frombuffer(encode_one(np.ascontiguousarray(image), codec, quality), np.uint8)
    return out


def decode_one(blob: Any, codec: str | None = None) -> np.ndarray:
    """One stored row (bytes or a uint8 array) -> (H, W, 3) uint8 RGB.

    ``codec`` restricts the formats Pillow tries (a JPEG row that starts like something else is
    an error, not a surprise); our rows are RGB already, and any other mode (grey, palette,
    RGBA from a foreign writer) is converted to RGB rather than returned with another shape."""
    data = blob.tobytes() if isinstance(blob, np.ndarray) else bytes(blob)
    if codec in (None, "jpeg"):  # our JPEG rows are plain: libjpeg-turbo straight into numpy
        pixels = decode_simple_jpeg(data)
        if pixels is not None:
            return pixels
    formats = [_FORMATS[codec]] if codec in _FORMATS else list(_FORMATS.values())
    with Image.open(io.BytesIO(data), formats=formats) as image:
        if image.mode != "RGB":
            image = image.convert("RGB")
        return np.asarray(image)


class BlobDecodeError(ValueError):
    """Row ``position`` of a batch given to :func:`decode_into` did not decode; the caller
    knows which shard and row that was and names it."""

    def __init__(self, position: int, problem: str) -> None:
        self.position = position
        self.problem = one_line(problem, 200)
        super().__init__(f"row {position}: {self.problem}")


def _decode_part(
    blobs: Sequence[Any],
    out: np.ndarray,
    dest: np.ndarray,
    positions: range,
    codec: str | None,
) -> None:
    want = out.shape[1:]
    for i in positions:
        try:
            image = decode_one(blobs[i], codec)
        except Exception as error:  # Pillow raises OSError, SyntaxError, ValueError...
            raise BlobDecodeError(i, f"does not decode as {codec or 'an image'}: {error}") from None
        if image.shape != want:
            raise BlobDecodeError(i, f"decodes to {image.shape}, expected {want}")
        out[int(dest[i])] = image


def default_decode_threads() -> int:
    """Threads that decode one batch: ``min(4, cores)``. More rarely help, because the reader's
    own prefetch thread and the training loop want cores too."""
    return max(1, min(4, available_cores()))


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_PID = os.getpid()
_POOLS_LOCK = threading.Lock()


def _pool(threads: int) -> ThreadPoolExecutor:
    """The process's pool of ``threads`` decoder threads, made on first use. After a ``fork``
    the inherited pools have no threads (only the forking thread survives), so a child makes
    its own instead of waiting forever on them."""
    global _POOLS_PID
    with _POOLS_LOCK:
        if os.getpid() != _POOLS_PID:
            _POOLS.clear()  # the parent's pools: not ours to shut down
            _POOLS_PID = os.getpid()
        pool = _POOLS.get(threads)
        if pool is None:
            pool = _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="ipmix-decode")
        return pool


def decode_into(
    blobs: Sequence[Any],
    out: np.ndarray,
    dest_rows: Sequence[int] | np.ndarray,
    threads: int | None = None,
    codec: str | None = None,
) -> None:
    """Decode ``blobs[i]`` into ``out[dest_rows[i]]`` for every ``i``; ``out`` is the caller's
    preallocated (B, H, W, 3) uint8 batch, and each row must decode to exactly (H, W, 3).

    With ``threads`` > 1 (default :func:`default_decode_threads`) the rows are cut into that
    many contiguous parts decoded in parallel: Pillow releases the GIL while it decodes, and one
    task per part (not per row) keeps the pool's overhead out of the way. A row that does not
    decode raises :class:`BlobDecodeError` with its position in ``blobs``."""
    n = len(blobs)
    dest = np.asarray(dest_rows, dtype=np.int64)
    if len(dest) != n:
        raise ValueError(f"{n} rows to decode but {len(dest)} destinations")
    if out.dtype != np.uint8 or out.ndim != 4 or out.shape[3] != 3:
        raise ValueError(f"out must be uint8 (B, H, W, 3), got {out.dtype} {out.shape}")
    workers = default_decode_threads() if threads is None else max(1, int(threads))
    workers = min(workers, n)
    if workers <= 1:
        _decode_part(blobs, out, dest, range(n), codec)
        return
    bounds = np.linspace(0, n, workers + 1).astype(int).tolist()
    pool = _pool(workers)
    futures = [
        pool.submit(_decode_part, blobs, out, dest, range(a, b), codec)
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    errors = [f.exception() for f in futures]  # wait for all: none may write into out later
    for error in errors:
        if error is not None:
            raise error


def is_coded(dset: h5py.Dataset) -> bool:
    """Does ``dset`` hold one encoded file per row (rather than raw pixels)?"""
    return h5py.check_vlen_dtype(dset.dtype) is not None


def dataset_codec(dset: h5py.Dataset) -> str:
    """The codec of an image dataset: ``raw`` for uint8 pixels, else its ``codec`` attribute
    (checked to be one we decode)."""
    if not is_coded(dset):
        return "raw"
    value = dset.attrs.get("codec", b"")
    value = value.decode() if isinstance(value, bytes) else str(value)
    if value not in CODED:
        raise ValueError(f"'{dset.name}' holds encoded rows with unknown codec {value!r}")
    return value


def dataset_image_shape(dset: h5py.Dataset) -> tuple[int, int, int]:
    """(H, W, 3) of the images in ``dset``: its shape for raw pixels, else its ``image_shape``
    attribute (a coded dataset's own shape is just (n,))."""
    if not is_coded(dset):
        return tuple(int(v) for v in dset.shape[1:])  # type: ignore[return-value]
    shape = np.asarray(dset.attrs.get("image_shape", []), dtype=np.int64).tolist()
    if len(shape) != 3 or shape[2] != 3 or min(shape) < 1:
        raise ValueError(f"'{dset.name}' has no valid image_shape attribute (got {shape})")
    return (int(shape[0]), int(shape[1]), 3)


def dataset_quality(dset: h5py.Dataset) -> int | None:
    """The JPEG quality a coded dataset records, else ``None``."""
    value = dset.attrs.get("quality") if is_coded(dset) else None
    return None if value is None else int(value)
