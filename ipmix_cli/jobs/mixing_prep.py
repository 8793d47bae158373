"""The mixing set prepared for a job's output size, remembered across runs of the same bank.

Why: a job decodes every picture of its bank, hashes the pixels for its fingerprint and resizes
them for the output size: 0.15 s of a 2 s, 50,000-image CIFAR run for a 200-picture 256 px bank
(0.09 s of it inflating 39 MB of PNG rows), paid again by every run, resume and dry run. The
prepared set (a few hundred KB at 32 px) and the pixels' sha256 are kept under
``<cache root>/mixing`` (:mod:`ipmix_cli.fs.user_cache`), keyed by the bank's files (relative
names, sizes and content digests: reading and hashing 17 MB of PNGs takes ~12 ms), the output
size, the mixing side and the versions that decide the bytes (:func:`byte_versions`). A key made
from the content itself cannot go stale, whatever happens to file times.

Only sets of at most :data:`CACHE_MAX_BYTES` prepared are kept, :data:`CACHE_ENTRIES` at most
(the least recently used go); an entry that cannot be read or written is ignored, and
``IPMIX_MIXING_CACHE=off`` turns the cache off.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ipmix_cli.augment.config import IPMixConfig
from ipmix_cli.augment.mixing_set import MixingSet, resized_shape
from ipmix_cli.fs.atomic import temporary_sibling
from ipmix_cli.fs.digest_cache import sha256_file
from ipmix_cli.fs.user_cache import cache_off, cache_root
from ipmix_cli.sources.detect import HDF5_SUFFIXES
from ipmix_cli.sources.mixing_pictures import mixing_files, open_mixing_set
from ipmix_cli.versions import byte_versions

CACHE_MAX_BYTES = 64 << 20
"""Larger prepared sets (224 px and up, big banks) are remade each run: there the job dwarfs
the preparing, and the cache would fill the disk."""

CACHE_ENTRIES = 16


@dataclass(frozen=True)
class PreparedMixing:
    """A job's mixing set, and what its fingerprint records of the pictures it came from."""

    mixing: MixingSet
    count: int
    pixels_sha256: str  # over each decoded picture's shape and bytes, in order


def pixels_digest(pictures: list[np.ndarray]) -> str:
    """The sha256 of decoded pictures: their shapes and bytes, in order."""
    digest = hashlib.sha256()
    for picture in pictures:
        digest.update(f"{picture.shape}".encode())
        digest.update(np.ascontiguousarray(picture).tobytes())
    return digest.hexdigest()


def prepare_mixing(
    path: Path, config: IPMixConfig, check_bytes: Callable[[int, int], None]
) -> PreparedMixing:
    """Load and prepare the mixing set at ``path`` for ``config``'s output size, from the
    cache when it holds this bank at this size. ``check_bytes(count, nbytes)`` raises when the
    prepared set would be too large; it runs before any resizing."""
    entry = _entry_path(path, config)
    if entry is not None:
        cached = _read_entry(entry, config)
        if cached is not None:
            check_bytes(cached.count, cached.mixing.pictures.nbytes)
            with contextlib.suppress(OSError):
                os.utime(entry)  # recently used
            return cached
    pictures = open_mixing_set(path)
    shapes = [resized_shape(*p.shape[:2], config.mixing_side, config.size) for p in pictures]
    hmax, wmax = max(h for h, _ in shapes), max(w for _, w in shapes)
    check_bytes(len(pictures), len(pictures) * hmax * wmax * 3)
    prepared = PreparedMixing(
        MixingSet.from_pictures(pictures, config), len(pictures), pixels_digest(pictures)
    )
    if entry is not None and prepared.mixing.pictures.nbytes <= CACHE_MAX_BYTES:
        _write_entry(entry, prepared)
    return prepared


def _entry_path(path: Path, config: IPMixConfig) -> Path | None:
    if cache_off("IPMIX_MIXING_CACHE"):
        return None
    files = _keyed_files(mixing_files(path))
    root = Path(path).absolute()
    if not root.is_dir():
        root = root.parent  # a bank file: it and its shards are named from its folder
    digest = hashlib.sha256(
        json.dumps(
            {"versions": byte_versions(), "size": config.size, "side": config.mixing_side},
            sort_keys=True,
        ).encode()
    )
    try:
        for f in files:
            name = f.relative_to(root).as_posix()
            digest.update(f"{name}\0{f.stat().st_size}\0{sha256_file(f)}\n".encode())
    except (OSError, ValueError):
        return None  # the load itself then says what is wrong with the file
    return cache_root() / "mixing" / f"{digest.hexdigest()[:40]}.npz"


def _keyed_files(files: list[Path]) -> list[Path]:
    """The files whose bytes key a prepared mixing set: ``files``, and for an HDF5 bank that
    is an ipmix output its shards too, since its pixels live there (a shard replaced by
    another of the same size must not bring back the old pictures)."""
    if len(files) == 1 and files[0].suffix.lower() in HDF5_SUFFIXES:
        shards = files[0].with_suffix(".shards")
        if shards.is_dir():
            return [files[0], *sorted(shards.glob("*.h5"))]
    return files


def _read_entry(entry: Path, config: IPMixConfig) -> PreparedMixing | None:
    try:
        with np.load(entry, allow_pickle=False) as data:
            pictures, shapes = data["pictures"], data["shapes"]
            count, pixels = int(data["count"]), str(data["pixels_sha256"])
        mixing = MixingSet(pictures, shapes, config.size, config.mixing_side)
    except Exception:  # whatever is wrong with an entry, it is only a miss
        return None
    if count != len(mixing) or len(pixels) != 64:
        return None
    return PreparedMixing(mixing, count, pixels)


def _write_entry(entry: Path, prepared: PreparedMixing) -> None:
    with contextlib.suppress(OSError):
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_sibling(entry)
        try:
            with open(tmp, "xb") as handle:
                np.savez(
                    handle,
                    pictures=prepared.mixing.pictures,
                    shapes=prepared.mixing.shapes,
                    count=np.int64(prepared.count),
                    pixels_sha256=np.str_(prepared.pixels_sha256),
                )
            os.replace(tmp, entry)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        _prune(entry.parent)


def _prune(folder: Path) -> None:
    """Keep the :data:`CACHE_ENTRIES` most recently used entries."""
    entries = []
    for f in folder.glob("*.npz"):
        with contextlib.suppress(OSError):
            entries.append((f.stat().st_mtime_ns, f))
    for _, f in sorted(entries, reverse=True)[CACHE_ENTRIES:]:
        with contextlib.suppress(OSError):
            f.unlink()
