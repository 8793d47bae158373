"""The :class:`Source` interface every input format implements, and what formats share.

Sources are sent to worker processes (joblib/loky, dask). They are therefore small when pickled
and hold no open file: HDF5 handles, memory maps and decoded CIFAR batches live in ``_cache_*``
attributes that are dropped by ``__getstate__`` and re-created lazily, per process, on first
read. An HDF5 handle inherited through ``fork`` is never reused (the owning pid is checked).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ipmix_cli.errors import SourceError
from ipmix_cli.fs.probe import lookup_problem

IGNORED_NAMES = {"thumbs.db", "desktop.ini"}

# h5py handles inherited through fork are parked here instead of being closed in the child:
# closing would tear down state the parent still uses.
ABANDONED_HANDLES: list[Any] = []
# Sources are shared by the threads of one process (the threads backend): a lazy load of a
# process-wide cache (a decompressed array, an HDF5 handle) happens once, under this lock.
LAZY_LOAD = threading.RLock()


class Progress(Protocol):
    """What a long scan reports to (``ui.progress.LazyBar`` is one): the total, then steps."""

    def start(self, total: int, done: int = 0) -> None: ...

    def update(self, n: int) -> None: ...


def is_hidden(name: str) -> bool:
    """Hidden files and folders and OS litter (``Thumbs.db``...) are never data."""
    return name.startswith(".") or name.lower() in IGNORED_NAMES


def is_ipmix_output(folder: Path, name: str) -> bool:
    """Whether ``folder / name`` is (part of) an ``ipmix augment`` output: ``X.shards`` beside
    ``X.h5``, or that ``X.h5``. An output written inside its input folder must not become part
    of the input of a later run (nor change its fingerprint, which would refuse a resume)."""
    if name.endswith(".shards"):
        return (folder / (name[: -len(".shards")] + ".h5")).is_file() or any(
            (folder / name / marker).exists() for marker in (".lock", ".work")
        )
    if name.endswith(".h5"):
        return (folder / (name[: -len(".h5")] + ".shards")).is_dir()
    return False


class Source:
    """A labelled image data set, read one image (or batch) at a time as uint8 (H, W, 3) RGB.

    Public attributes: ``path`` (absolute), ``format``, ``labels`` (int64, one per image),
    ``class_names``, ``image_size`` ((H, W) when every image has the same size, else ``None``),
    ``skipped`` (``(path, reason)`` pairs left out under ``on_error="skip"``).
    """

    format: str = "?"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.labels: np.ndarray = np.zeros(0, dtype=np.int64)
        self.class_names: list[str] = []
        self.class_labels: list[str] | None = None  # human labels, where a class map gave them
        self.image_size: tuple[int, int] | None = None
        self.skipped: list[tuple[str, str]] = []
        self._fingerprint: dict[str, Any] | None = None

    # -- pickling: never ship open handles or decoded caches to workers --------------------
    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_cache")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path} n={len(self)} classes={len(self.class_names)}>"

    def _index(self, i: int) -> int:
        n = len(self)
        j = int(i)
        if j < 0:
            j += n
        if not 0 <= j < n:
            raise IndexError(f"image index {i} out of range for {n} images in {self.path}")
        return j

    def _indices(self, indices: Iterable[int]) -> np.ndarray:
        """``indices`` as checked, non-negative int64 positions, without a Python step per
        index: at 32 px a per-index check cost a fifth of the time it takes to augment."""
        if isinstance(indices, np.ndarray):
            raw = indices
        else:
            raw = np.fromiter((int(i) for i in indices), dtype=np.int64)
        idx = np.asarray(raw).astype(np.int64, copy=False).reshape(-1)
        n = len(self)
        if idx.size and (int(idx.min()) < -n or int(idx.max()) >= n):
            bad = int(idx[(idx < -n) | (idx >= n)][0])
            raise IndexError(f"image index {bad} out of range for {n} images in {self.path}")
        return np.where(idx < 0, idx + n, idx)

    def read(self, i: int) -> np.ndarray:
        """Image ``i`` as a C-contiguous uint8 (H, W, 3) array."""
        raise NotImplementedError

    def file_paths(self, indices: Iterable[int]) -> list[str]:
        """The files images ``indices`` are read from, one each, for a reader to ask the disk
        for ahead of time (:mod:`ipmix_cli.fs.readahead`); empty where images do not live in
        files of their own (arrays, HDF5)."""
        return []

    def read_batch(self, indices: Iterable[int]) -> np.ndarray | list[np.ndarray]:
        """Images for ``indices`` (any order, repeats allowed).

        An (n, H, W, 3) array when the source has a uniform ``image_size``, else a list.
        """
        images = [self.read(i) for i in indices]
        if self.image_size is not None:
            h, w = self.image_size
            if not images:
                return np.zeros((0, h, w, 3), dtype=np.uint8)
            return np.stack(images)
        return images

    def image_of_other_size(self, size: tuple[int, int]) -> tuple[str, tuple[int, int]] | None:
        """``(file, (h, w))`` of the first image whose size is not ``size``, or None: the job
        checks this before any work when its pre-transform takes one size only."""
        if self.image_size is not None and tuple(self.image_size) != tuple(size):
            return str(self.path), self.image_size
        return None

    def fingerprint(self) -> dict[str, Any]:
        """Paths, sizes and content hashes identifying this input (computed once, cached)."""
        if self._fingerprint is None:
            self._fingerprint = self._compute_fingerprint()
        return self._fingerprint

    def _compute_fingerprint(self) -> dict[str, Any]:
        raise NotImplementedError

    def _options(self) -> dict[str, Any]:
        return {}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description for manifests and ``ipmix inspect`` (no hashing done here)."""
        return {
            "format": self.format,
            "path": str(self.path),
            "count": len(self),
            "num_classes": len(self.class_names),
            "class_names": list(self.class_names),
            "image_size": None if self.image_size is None else list(self.image_size),
            "options": self._options(),
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
        }

    def close(self) -> None:
        """Drop per-process caches and handles (re-opened lazily on the next read)."""
        for key in [k for k in self.__dict__ if k.startswith("_cache")]:
            value = self.__dict__.pop(key)
            if hasattr(value, "close") and not isinstance(value, dict):
                value.close()


def as_names(values: Any, path: Path, what: str = "class names") -> list[str]:
    """Class names from bytes or any values, as ``str``; ``path`` and ``what`` (the key they
    came from) name them in the one-line :class:`SourceError` for names that are not a list or
    bytes that are not UTF-8 text: a name must never be silently read wrong, and a traceback
    would not say which file holds it."""
    if isinstance(values, np.ndarray) and values.ndim != 1:
        raise SourceError(path, f"{what} has shape {values.shape}, expected one name per class")
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise SourceError(path, f"{what} is {type(values).__name__}, not a list of names")
    names = []
    for i, v in enumerate(values):
        if isinstance(v, bytes):  # np.bytes_ too
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError:
                raise SourceError(path, f"{what}: name {i} ({v!r}) is not UTF-8 text") from None
        names.append(str(v))
    return names


def path_exists(path: Path) -> bool:
    """Whether ``path`` exists. Any other answer of the file system than "no such file" (a
    name too long for it, a loop of links, a folder above that cannot be searched) is a
    one-line :class:`SourceError` naming the path: ``Path.exists`` raises those on Python 3.11,
    and a traceback would not say which of the command's paths is wrong."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as error:
        raise SourceError(path, lookup_problem(error)) from None
    return True


def check_labels(path: Path, labels: Any, n: int, key: str = "labels") -> np.ndarray:
    """Labels must be N non-negative integers, shape (N,) or (N, 1); returns int64 (N,)."""
    lab = np.asarray(labels)
    if lab.ndim == 2 and lab.shape[1] == 1:
        lab = lab[:, 0]
    if lab.ndim != 1:
        raise SourceError(path, f"'{key}' has shape {lab.shape}, expected ({n},)")
    if lab.shape[0] != n:
        raise SourceError(path, f"'{key}' has {lab.shape[0]} entries but there are {n} images")
    if lab.dtype.kind not in "iub":
        raise SourceError(path, f"'{key}' has dtype {lab.dtype}, expected integers")
    if n and lab.dtype.kind == "u" and int(lab.max()) > np.iinfo(np.int64).max:
        # int64 would wrap it to a negative number: say the value the file holds
        raise SourceError(path, f"'{key}' contains {int(lab.max())}, too large for a class id")
    lab = lab.astype(np.int64)
    if n and lab.min() < 0:
        raise SourceError(
            path,
            f"'{key}' contains negative values (e.g. {int(lab.min())}); "
            "-1 marks an image from a missing ipmix shard",
        )
    return lab


MAX_UNNAMED_CLASSES = 1_000_000
"""Without class names, labels must be ids 0..C-1 with C at most this (ImageNet-21k has 21,841):
a stray label of 2**40 must not allocate a list of 2**40 names."""


def class_names_for(path: Path, labels: np.ndarray, names: Sequence[str]) -> list[str]:
    """The class names of ``labels``: ``names`` when given (which must cover every label),
    else ``"0" .. str(max label)``."""
    top = int(labels.max()) + 1 if len(labels) else 0
    if not names:
        if top > MAX_UNNAMED_CLASSES:
            raise SourceError(
                path,
                f"labels go up to {top - 1}, but without class names labels must be class ids "
                f"0..{MAX_UNNAMED_CLASSES - 1}; give class names or renumber the labels",
            )
        return [str(c) for c in range(top)]
    if top > len(names):
        raise SourceError(
            path, f"labels go up to {top - 1} but only {len(names)} class names are given"
        )
    return list(names)
