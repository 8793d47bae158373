"""Reading an output back: check every shard is there, then hand out its data.

HDF5 fills a virtual dataset's missing source with zeros (and label -1), silently. Every ipmix
reader therefore goes through :func:`check_output` first, which looks at each shard's
attributes (cheap: no data is read or hashed) and names the first one that is missing or not
the one the entry file recorded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ipmix_cli.errors import ShardError
from ipmix_cli.shards.layout import datasets_for
from ipmix_cli.shards.manifest import Manifest, read_manifest
from ipmix_cli.shards.shard_info import read_shard_info

_INHERITED: list[Any] = []  # h5py handles inherited through fork, kept alive and untouched


def check_output(entry_path: str | os.PathLike[str]) -> Manifest:
    """Check that every shard of an output exists as recorded; return the manifest.

    This is the guard against HDF5 silently filling a missing shard with zeros. It compares
    each shard's size with the entry's record (format 2: one ``stat`` a shard, so an output of
    20,000 shards opens in a fraction of a second), or reads its attributes (format 1);
    ``verify`` also re-hashes the data.
    """
    entry = Path(entry_path).absolute()
    manifest = read_manifest(entry)
    for s in manifest.shards:
        p = entry.parent / s.file
        try:
            size = p.stat().st_size if p.is_file() else None
        except OSError:
            size = None
        if size is None:
            raise ShardError(p, f"shard is missing (it should hold {s.count} images)")
        if s.bytes is not None:  # format 2: a shard is never modified, its size tells
            if size != s.bytes:
                raise ShardError(
                    p, f"shard was replaced or truncated: {size} bytes, the entry records {s.bytes}"
                )
            continue
        info = read_shard_info(p)
        if info.count != s.count:
            raise ShardError(
                p, f"shard holds {info.count} images, the entry file records {s.count}"
            )
        if info.checksum != s.checksum:
            raise ShardError(p, "shard was replaced: its checksum differs from the entry's record")
    return manifest


class Output:
    """A checked, read-only view of an ipmix output (see :func:`open_output`).

    ``images`` etc. are h5py datasets over the entry's virtual datasets (slice them to read);
    ``labels`` is loaded eagerly. Picklable: the HDF5 handle is re-opened per process.
    """

    def __init__(self, entry: Path, manifest: Manifest) -> None:
        self.path = entry
        self.manifest = manifest
        self.class_names: list[str] = list(manifest.class_names)
        self.mode: str = manifest.mode
        self.count = manifest.count
        self.image_shape = manifest.image_shape
        self.datasets = datasets_for(self.mode)
        self._handle: h5py.File | None = None
        self._pid = os.getpid()
        self.labels = np.asarray(self.dataset("labels")[()], dtype=np.int64)
        if self.count and self.labels.min() < 0:  # a shard vanished after the check
            raise ShardError(entry, "labels contain -1: a shard went missing while opening")

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handle"] = None
        return state

    def _file(self) -> h5py.File:
        if self._handle is not None and self._pid != os.getpid():
            _INHERITED.append(self._handle)  # inherited through fork: leave it alone
            self._handle = None
        if self._handle is None:
            self._handle = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._handle

    def dataset(self, name: str) -> h5py.Dataset:
        """The virtual dataset ``name`` (one of :attr:`datasets`)."""
        if name not in self.datasets:
            raise KeyError(f"{name!r} is not in this output (has {', '.join(self.datasets)})")
        if name not in self._file():
            raise ShardError(
                self.path,
                f"'{name}' is stored encoded in the shards (no virtual dataset in the entry "
                "file); read it with ShardReader, which decodes it",
            )
        return self._file()[name]

    @property
    def images(self) -> h5py.Dataset:
        """(N, H, W, 3) uint8; the first augmented view in JSD mode."""
        return self.dataset("images")

    def __len__(self) -> int:
        return self.count

    def read(
        self, start: int, stop: int, names: Sequence[str] = ("images", "labels")
    ) -> dict[str, np.ndarray]:
        """Rows ``start:stop`` of each named dataset, as numpy arrays."""
        return {name: self.dataset(name)[start:stop] for name in names}

    def close(self) -> None:
        """Close the HDF5 handle (re-opened on the next access)."""
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = None

    def __enter__(self) -> Output:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_output(entry_path: str | os.PathLike[str]) -> Output:
    """Open an ipmix output for reading after checking every shard is present and complete.

    Raises :class:`ShardError` naming the first missing or mismatched shard, instead of letting
    HDF5 return zeros for it.
    """
    entry = Path(entry_path).absolute()
    manifest = check_output(entry)
    return Output(entry, manifest)
