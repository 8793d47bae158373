"""Loading a mixing set's pictures (a fractal bank folder, any picture folder, or HDF5)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ipmix_cli.cores import available_cores
from ipmix_cli.errors import IpmixError, SourceError, one_line
from ipmix_cli.fs.regular import path_kind
from ipmix_cli.sources.arrays import (
    check_hdf5,
    check_images,
    check_virtual_sources,
    without_frames,
)
from ipmix_cli.sources.base import is_hidden, path_exists
from ipmix_cli.sources.decode import decode_image, is_image_name
from ipmix_cli.sources.detect import HDF5_SUFFIXES

DECODE_THREADS = 8
"""Most threads decoding a folder's pictures: Pillow decodes without the GIL (a 256 px PNG of
a fractal bank spends ~80% of its ~1.6 ms there), so a 1,000-picture bank is ready in about
1 / cores of the serial time; more threads than this gain nothing for a set this small."""


def mixing_files(path: str | os.PathLike[str]) -> list[Path]:
    """The files a mixing set is read from, in order: a folder's pictures (searched
    recursively, sorted by relative path, hidden entries and non-image files skipped), else the
    one HDF5 bank file in it; an HDF5 path is itself. Errors name the path.

    An HDF5 bank is checked here, without reading its pixels (:func:`_open_h5_bank`): the job
    keys its cache of prepared mixing sets by these files, and an HDF5 file whose ``images``
    are virtual reads a missing shard as black pictures, which no hash of the file itself
    shows."""
    files = _find_files(path)
    if files[0].suffix.lower() in HDF5_SUFFIXES or not Path(path).is_dir():
        _open_h5_bank(files[0], 0)
    return files


def _find_files(path: str | os.PathLike[str]) -> list[Path]:
    """:func:`mixing_files`, without the check of an HDF5 bank."""
    p = Path(path).absolute()
    if not path_exists(p):
        raise SourceError(p, "mixing set does not exist")
    if not p.is_dir():
        if not p.is_file():  # opening a named pipe would wait for a writer
            raise SourceError(p, f"{path_kind(p)}, not a mixing set folder or HDF5 bank file")
        return [p]
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(p):
        dirnames[:] = [d for d in dirnames if not is_hidden(d)]
        files.extend(Path(dirpath) / f for f in filenames if not is_hidden(f) and is_image_name(f))
    files.sort(key=lambda f: f.relative_to(p).as_posix())
    if files:
        return files
    banks = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in HDF5_SUFFIXES)
    if len(banks) == 1:
        return banks
    raise SourceError(p, "mixing set holds no images")


def open_mixing_set(path: str | os.PathLike[str], limit: int | None = None) -> list[np.ndarray]:
    """Load a mixing set (e.g. a fractal bank) as a list of uint8 (H, W, 3) images.

    ``path`` is a folder of pictures or an HDF5 bank (see :func:`mixing_files`); an HDF5 file
    holds an ``images`` (N, H, W, 3) / (N, H, W) uint8 dataset. Images may differ in size. Any
    undecodable picture is an error naming it: a mixing set is small and should be clean.
    ``limit`` keeps only the first pictures (a preview need not decode a whole bank).
    """
    files = _find_files(path)
    if Path(path).is_dir() and files[0].suffix.lower() not in HDF5_SUFFIXES:
        return decode_pictures(files[:limit])
    return _open_h5_bank(files[0], limit)  # checked there


def _open_h5_bank(p: Path, limit: int | None) -> list[np.ndarray]:
    """The first ``limit`` pictures of an HDF5 mixing set (all for ``None``; ``0``: only the
    check). Its ``images`` may be virtual (an ipmix output, ``ipmix export``'s for one): every
    part must be there, as for an ``--input``, because HDF5 reads a missing shard as black
    pictures, and a mixing set of black pictures trains silently wrong."""
    check_hdf5(p)
    try:
        arr = _read_h5_bank(p, limit)
    except IpmixError as error:
        raise without_frames(error) from None
    if arr.ndim == 3:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    elif arr.shape[3] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return [np.ascontiguousarray(a) for a in arr]


def _read_h5_bank(p: Path, limit: int | None) -> np.ndarray:
    """The checks and the read of :func:`_open_h5_bank`, whose frame holds h5py objects."""
    import h5py

    from ipmix_cli import shards

    try:
        with h5py.File(p, "r") as f:
            if "images" not in f:
                raise SourceError(p, "mixing-set HDF5 file has no 'images' dataset")
            dset = f["images"]
            if not isinstance(dset, h5py.Dataset):
                raise SourceError(p, "'images' is a group, not a dataset")
            check_images(p, "images", dset.shape, dset.dtype)
            if f.attrs.get("kind") == shards.ENTRY_KIND:
                shards.check_output(p)  # every shard there as recorded, one stat each
            else:
                check_virtual_sources(p, dset, "images")
            arr = dset[:limit]
    except IpmixError:
        raise
    except (OSError, ValueError, KeyError) as error:
        raise SourceError(p, f"not a readable HDF5 file ({one_line(error)})") from None
    return arr


def decode_pictures(files: list[Path], threads: int | None = None) -> list[np.ndarray]:
    """Decode ``files`` in their order on a few threads (``threads``: at most
    :data:`DECODE_THREADS`, one per core). A file that does not decode raises its
    :class:`~ipmix_cli.errors.DecodeError` (naming it); when several do, the first of ``files``
    is the one reported, whatever the threads' timing, and the rest of the work is cancelled."""
    if threads is None:
        threads = min(DECODE_THREADS, available_cores())
    threads = max(1, min(threads, len(files) // 4))  # a handful of pictures: not worth a pool
    if threads == 1:
        return [decode_image(f) for f in files]
    with ThreadPoolExecutor(threads, thread_name_prefix="ipmix-decode") as pool:
        futures = [pool.submit(decode_image, f) for f in files]
        try:
            return [future.result() for future in futures]
        finally:  # an error (or Ctrl-C): drop what has not started
            for future in futures:
                future.cancel()
