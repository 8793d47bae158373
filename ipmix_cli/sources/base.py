"""Datasets in: one :class:`Source` interface over image folders, CIFAR pickles, .npz/.npy, HDF5.

Whatever the input, a source hands out ``uint8`` (H, W, 3) RGB arrays, ``int64`` labels and class
names, and it describes itself (``to_dict``, ``fingerprint``) so the output manifest can say
exactly what it was made from.

Sources are sent to worker processes (joblib/loky, dask). They are therefore small when pickled
and hold no open file: HDF5 handles, memory maps and decoded CIFAR batches live in ``_cache_*``
attributes that are dropped by ``__getstate__`` and re-created lazily, per process, on first
read. An HDF5 handle inherited through ``fork`` is never reused (the owning pid is checked).

Formats and how they are recognised (``open_source(path)``):

``folder``
    ``ROOT/<class>/<image>``; class names sorted give label ids 0..C-1; files sorted (by path
    relative to the class folder; nested sub-folders are included). Extensions are matched
    case-insensitively against :data:`ipmix_cli.decode.IMAGE_EXTENSIONS`; hidden files and
    folders (leading ``.``) and ``Thumbs.db`` / ``desktop.ini`` are ignored, as are plain files
    directly in ``ROOT`` (README, licences). Any other file inside a class folder is a
    "non-image file" error (or skipped with ``on_error="skip"``).
``cifar``
    A folder holding the CIFAR "python version" pickles: CIFAR-10 ``data_batch_1..5`` +
    ``test_batch`` (+ ``batches.meta``), or CIFAR-100 ``train`` / ``test`` (+ ``meta``, fine
    labels). ``split`` picks ``"train"`` (default) or ``"test"``. Pickles are loaded with a
    restricted unpickler that only rebuilds numpy arrays, so a hostile file cannot run code.
``npz``
    ``images`` (or ``x``): (N, H, W, 3), (N, H, W, 1) or (N, H, W) uint8; ``labels`` (or ``y``):
    (N,) or (N, 1) integers; optional ``class_names`` (N_classes,) strings.
``npy``
    ``IMAGES.npy`` as above (memory-mapped), labels from ``labels_path=`` or else the sibling
    ``IMAGES_labels.npy`` (same stem plus ``_labels``); optional sibling
    ``IMAGES_class_names.txt`` (one name per line).
``hdf5``
    Datasets ``images`` (or ``x``) and ``labels`` (or ``y``) as above; class names from a
    ``class_names`` attribute on the file (or on the labels dataset). An ipmix output entry file
    is checked first (every shard present, counts match), so a missing shard is an error, never
    a run of black images.

Without class names in the input, names are ``"0" .. str(max_label)``.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import threading
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ipmix_cli.decode import decode_image, is_image_name
from ipmix_cli.errors import DecodeError, IpmixError, SourceError, one_line

__all__ = [
    "FORMATS",
    "ArraySource",
    "CifarSource",
    "FolderSource",
    "Hdf5Source",
    "NpySource",
    "NpzSource",
    "Source",
    "detect_format",
    "open_mixing_set",
    "open_source",
    "sha256_file",
]

FORMATS = ("folder", "cifar", "npz", "npy", "hdf5")
ON_ERROR = ("fail", "skip")
HDF5_SUFFIXES = {".h5", ".hdf5", ".hdf", ".he5"}
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
NPY_MAGIC = b"\x93NUMPY"
IGNORED_NAMES = {"thumbs.db", "desktop.ini"}
_HASH_BLOCK = 1 << 20

# h5py handles inherited through fork are parked here instead of being closed in the child:
# closing would tear down state the parent still uses.
_ABANDONED_HANDLES: list[Any] = []
# Sources are shared by the threads of one process (the threads backend): a lazy load of a
# process-wide cache (a decompressed array, an HDF5 handle) happens once, under this lock.
_LAZY_LOAD = threading.RLock()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks (constant memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name.lower() in IGNORED_NAMES


# --------------------------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Folder of class subfolders
# --------------------------------------------------------------------------------------------


def _probe_file(path: Path, full: bool) -> tuple[tuple[int, int] | None, str | None, int, str]:
    """Check one image file: ((h, w) or None, error or None, size in bytes, sha256 or "").

    ``full`` decodes the whole image (catches truncation) and hashes the bytes it read anyway;
    otherwise only the header is read (Pillow's lazy open) for the size.
    """
    name = str(path)
    try:
        if full:
            data = path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            image = decode_image(data, name=name)
            return (int(image.shape[0]), int(image.shape[1])), None, len(data), digest
        size = path.stat().st_size
        if size == 0:
            raise DecodeError(name, "empty file (0 bytes), not an image")
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as img:
                w, h = img.size
                orientation = img.getexif().get(0x0112, 1)
        except UnidentifiedImageError:
            raise DecodeError(name, "not an image file (Pillow cannot identify it)") from None
        except (OSError, SyntaxError, ValueError) as error:
            raise DecodeError(name, f"corrupt image header ({error})") from None
        if orientation in (5, 6, 7, 8):  # EXIF transposes/rotates by 90 degrees
            h, w = w, h
        return (int(h), int(w)), None, int(size), ""
    except IpmixError as error:
        return None, error.problem, 0, ""
    except OSError as error:
        return None, f"cannot read file ({error.strerror or error})", 0, ""


def _probe_many(root: str, relpaths: list[str], full: bool) -> list[tuple]:
    return [_probe_file(Path(root) / rel, full) for rel in relpaths]


class FolderSource(Source):
    """``ROOT/<class>/<image>`` folders (torchvision ImageFolder layout)."""

    format = "folder"

    def __init__(
        self,
        root: Path,
        *,
        on_error: str = "fail",
        validate: bool = True,
        n_jobs: int = 1,
    ) -> None:
        super().__init__(root)
        self.validate = bool(validate)
        entries = list(os.scandir(root))
        if not any(not _is_hidden(e.name) for e in entries):
            raise SourceError(root, "folder is empty")
        classes = sorted(e.name for e in entries if not _is_hidden(e.name) and e.is_dir())
        if not classes:
            n_top = sum(1 for e in entries if e.is_file() and is_image_name(e.name))
            hint = f" (found {n_top} image files at the top level)" if n_top else ""
            raise SourceError(
                root, f"no class subfolders{hint}; expected ROOT/<class name>/<image files>"
            )
        candidates: list[tuple[str, int]] = []  # (relative posix path, class id)
        problems: list[tuple[str, str]] = []
        for label, cls in enumerate(classes):
            for rel in self._walk(root, cls):
                if is_image_name(rel):
                    candidates.append((rel, label))
                else:
                    ext = os.path.splitext(rel)[1] or "(none)"
                    problems.append(
                        (rel, f"not an image file (extension {ext} is not an image type)")
                    )
        if not candidates:
            raise SourceError(root, f"no image files in the {len(classes)} class subfolders")

        results = self._probe([rel for rel, _ in candidates], validate, n_jobs)
        kept: list[tuple[str, int]] = []
        sizes: set[tuple[int, int]] = set()
        hash_lines: list[str] = []
        total_bytes = 0
        for (rel, label), (size, error, nbytes, digest) in zip(candidates, results, strict=True):
            if error is not None:
                problems.append((rel, error))
                continue
            kept.append((rel, label))
            sizes.add(size)
            total_bytes += nbytes
            hash_lines.append(f"{rel}\t{nbytes}\t{digest}\n")
        problems.sort()  # path order, so "fail" always names the same (first) file
        if problems and on_error == "fail":
            rel, reason = problems[0]
            if len(problems) > 1:
                reason += f" (and {len(problems) - 1} more; on_error='skip' skips them)"
            raise DecodeError(root / rel, reason)
        self.skipped = [(str(root / rel), reason) for rel, reason in problems]
        if not kept:
            raise SourceError(root, f"no readable images ({len(problems)} files skipped)")

        self.class_names = classes
        self._relpaths = "\0".join(rel for rel, _ in kept)  # one str: cheap to pickle
        self.labels = np.fromiter((lab for _, lab in kept), dtype=np.int64, count=len(kept))
        self.image_size = next(iter(sizes)) if len(sizes) == 1 else None
        if validate:
            self._fingerprint = self._fingerprint_from(hash_lines, total_bytes)

    @staticmethod
    def _walk(root: Path, cls: str) -> list[str]:
        """Non-hidden files under ``root/cls``, as sorted posix paths relative to ``root``."""
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(root / cls):
            dirnames[:] = [d for d in dirnames if not _is_hidden(d)]
            rel_dir = Path(dirpath).relative_to(root).as_posix()
            found.extend(f"{rel_dir}/{f}" for f in filenames if not _is_hidden(f))
        return sorted(found)

    def _probe(self, relpaths: list[str], full: bool, n_jobs: int) -> list[tuple]:
        if n_jobs == 1 or len(relpaths) < 256:
            return _probe_many(str(self.path), relpaths, full)
        import joblib

        step = max(64, len(relpaths) // (8 * max(1, abs(n_jobs))))
        chunks = [relpaths[i : i + step] for i in range(0, len(relpaths), step)]
        parts = joblib.Parallel(n_jobs=n_jobs)(
            joblib.delayed(_probe_many)(str(self.path), chunk, full) for chunk in chunks
        )
        return [item for part in parts for item in part]

    @property
    def relpaths(self) -> list[str]:
        """Kept files, relative to the root, in index order (posix separators)."""
        cached = self.__dict__.get("_cache_relpaths")
        if cached is None:
            cached = self._relpaths.split("\0")
            self._cache_relpaths = cached
        return cached

    def file_path(self, i: int) -> Path:
        """Absolute path of image ``i``."""
        return self.path / self.relpaths[self._index(i)]

    def read(self, i: int) -> np.ndarray:
        return decode_image(self.file_path(i))

    def _fingerprint_from(self, hash_lines: list[str], total_bytes: int) -> dict[str, Any]:
        digest = hashlib.sha256("".join(hash_lines).encode("utf-8", "surrogateescape")).hexdigest()
        return {
            "format": self.format,
            "path": str(self.path),
            "files": len(hash_lines),
            "bytes": total_bytes,
            "sha256": digest,
            "method": "sha256 over '<relative path>\\t<bytes>\\t<file sha256>\\n' per kept file",
        }

    def _compute_fingerprint(self) -> dict[str, Any]:
        lines = []
        total = 0
        for rel in self.relpaths:
            p = self.path / rel
            size = p.stat().st_size
            total += size
            lines.append(f"{rel}\t{size}\t{sha256_file(p)}\n")
        return self._fingerprint_from(lines, total)

    def _options(self) -> dict[str, Any]:
        return {"validate": self.validate}


# --------------------------------------------------------------------------------------------
# CIFAR python pickles
# --------------------------------------------------------------------------------------------

CIFAR10_TRAIN = tuple(f"data_batch_{k}" for k in range(1, 6))
CIFAR10_TEST = ("test_batch",)
CIFAR100_TRAIN = ("train",)
CIFAR100_TEST = ("test",)
_CIFAR_LABEL = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}

_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("copy_reg", "_reconstructor"),
    ("copyreg", "_reconstructor"),
    ("__builtin__", "object"),
    ("builtins", "object"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds plain containers and numpy arrays, and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data pickle")


def _load_pickle(path: Path) -> tuple[dict[str, Any], bytes]:
    """Load a CIFAR pickle (Python 2 or 3 written); keys normalised to ``str``."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SourceError(path, f"cannot read file ({error.strerror or error})") from None
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as error:  # noqa: BLE001 - any unpickling failure is a bad file
        raise SourceError(path, f"not a readable CIFAR pickle ({error})") from None
    if not isinstance(obj, dict):
        raise SourceError(path, f"not a CIFAR pickle (holds {type(obj).__name__}, not a dict)")
    return {
        (k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()
    }, data


def _names(values: Any) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def _cifar_variant(root: Path) -> str | None:
    names = {p.name for p in root.iterdir() if p.is_file()} if root.is_dir() else set()
    if names & {*CIFAR10_TRAIN, *CIFAR10_TEST, "batches.meta"}:
        return "cifar10"
    if "meta" in names and names & {"train", "test"}:
        return "cifar100"
    return None


class CifarSource(Source):
    """CIFAR-10 / CIFAR-100 "python version" directories."""

    format = "cifar"

    def __init__(self, root: Path, *, split: str = "train") -> None:
        super().__init__(root)
        if split not in ("train", "test"):
            raise SourceError(root, f"unknown CIFAR split {split!r} (choose 'train' or 'test')")
        variant = _cifar_variant(root)
        if variant is None:
            raise SourceError(
                root, "not a CIFAR directory (no data_batch_*/test_batch or train/test + meta)"
            )
        self.variant = variant
        self.split = split
        if variant == "cifar10":
            files = CIFAR10_TRAIN if split == "train" else CIFAR10_TEST
            meta_name, names_key, label_key = "batches.meta", "label_names", "labels"
        else:
            files = CIFAR100_TRAIN if split == "train" else CIFAR100_TEST
            meta_name, names_key, label_key = "meta", "fine_label_names", "fine_labels"
        missing = [f for f in files if not (root / f).is_file()]
        if missing:
            raise SourceError(
                root,
                f"{_CIFAR_LABEL[variant]} directory is missing {', '.join(missing)} "
                f"({split} split)",
            )
        self._files = list(files)
        labels: list[np.ndarray] = []
        batches: dict[int, np.ndarray] = {}
        hashes: dict[str, dict[str, Any]] = {}
        side = None
        for k, fname in enumerate(files):
            path = root / fname
            d, raw = _load_pickle(path)
            hashes[fname] = {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
            if "data" not in d or label_key not in d:
                present = ", ".join(sorted(d)) or "nothing"
                raise SourceError(
                    path, f"CIFAR batch lacks 'data' or '{label_key}' (has {present})"
                )
            data = np.asarray(d["data"])
            lab = np.asarray(d[label_key])
            if data.dtype != np.uint8:
                raise SourceError(path, f"CIFAR 'data' has dtype {data.dtype}, expected uint8")
            if data.ndim != 2 or data.shape[1] % 3:
                raise SourceError(path, f"CIFAR 'data' has shape {data.shape}, expected (N, 3*H*W)")
            s = int(round((data.shape[1] // 3) ** 0.5))
            if 3 * s * s != data.shape[1] or (side is not None and s != side):
                raise SourceError(
                    path, f"CIFAR 'data' rows of {data.shape[1]} values are not 3*S*S"
                )
            side = s
            lab = _check_labels(path, lab, data.shape[0], label_key)
            labels.append(lab)
            batches[k] = data
        self._cache_batches = batches
        self.labels = np.concatenate(labels).astype(np.int64)
        self._offsets = np.cumsum([0] + [len(x) for x in labels]).astype(np.int64)
        self.image_size = (side, side) if side else None
        meta_path = root / meta_name
        names: list[str] = []
        if meta_path.is_file():
            meta, raw = _load_pickle(meta_path)
            hashes[meta_name] = {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
            names = _names(meta.get(names_key, []))
        self.class_names = _class_names(root, self.labels, names)
        self._fingerprint = {
            "format": self.format,
            "path": str(root),
            "variant": variant,
            "split": split,
            "files": hashes,
        }

    def _batch(self, k: int) -> np.ndarray:
        cache = self.__dict__.setdefault("_cache_batches", {})
        if k not in cache:
            with _LAZY_LOAD:
                if k not in cache:
                    d, _ = _load_pickle(self.path / self._files[k])
                    cache[k] = np.asarray(d["data"])
        return cache[k]

    def _side(self) -> int:
        assert self.image_size is not None
        return self.image_size[0]

    def read(self, i: int) -> np.ndarray:
        j = self._index(i)
        k = int(np.searchsorted(self._offsets, j, side="right") - 1)
        s = self._side()
        row = self._batch(k)[j - self._offsets[k]]
        return np.ascontiguousarray(row.reshape(3, s, s).transpose(1, 2, 0))

    def read_batch(self, indices: Iterable[int]) -> np.ndarray:
        idx = self._indices(indices)
        s = self._side()
        out = np.empty((len(idx), s, s, 3), dtype=np.uint8)
        ks = np.searchsorted(self._offsets, idx, side="right") - 1
        for k in np.unique(ks):
            sel = ks == k
            rows = self._batch(int(k))[idx[sel] - self._offsets[k]]
            out[sel] = rows.reshape(-1, 3, s, s).transpose(0, 2, 3, 1)
        return out

    def _compute_fingerprint(self) -> dict[str, Any]:  # pragma: no cover - set in __init__
        raise AssertionError

    def _options(self) -> dict[str, Any]:
        return {"split": self.split, "variant": self.variant}


# --------------------------------------------------------------------------------------------
# Array files: npz, npy, HDF5
# --------------------------------------------------------------------------------------------


def _check_images(path: Path, key: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Images must be uint8 (N, H, W), (N, H, W, 1) or (N, H, W, 3); say which rule broke."""
    if np.dtype(dtype) != np.uint8:
        raise SourceError(
            path, f"'{key}' has dtype {np.dtype(dtype)}, expected uint8 (convert it first)"
        )
    ok = len(shape) == 3 or (len(shape) == 4 and shape[3] in (1, 3))
    if not ok:
        raise SourceError(
            path,
            f"'{key}' has shape {tuple(shape)}, expected (N, H, W, 3), (N, H, W, 1) or (N, H, W)",
        )
    if shape[0] == 0:
        raise SourceError(path, f"'{key}' holds no images (shape {tuple(shape)})")


def _check_labels(path: Path, labels: Any, n: int, key: str = "labels") -> np.ndarray:
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
    lab = lab.astype(np.int64)
    if n and lab.min() < 0:
        raise SourceError(
            path,
            f"'{key}' contains negative values (e.g. {int(lab.min())}); "
            "-1 marks an image from a missing ipmix shard",
        )
    return lab


def _class_names(path: Path, labels: np.ndarray, names: Sequence[str]) -> list[str]:
    top = int(labels.max()) + 1 if len(labels) else 0
    if not names:
        return [str(c) for c in range(top)]
    if top > len(names):
        raise SourceError(
            path, f"labels go up to {top - 1} but only {len(names)} class names are given"
        )
    return list(names)


class ArraySource(Source):
    """Shared logic for sources whose images are one (N, H, W[, C]) uint8 array."""

    image_key = "images"

    def _set_images(self, key: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        _check_images(self.path, key, shape, dtype)
        self.image_key = key
        self._shape = tuple(int(s) for s in shape)
        self.image_size = (self._shape[1], self._shape[2])

    def _array(self) -> Any:
        """The images array-like for this process (loaded / mapped / opened lazily)."""
        raise NotImplementedError

    def _expand(self, block: np.ndarray) -> np.ndarray:
        """(…, H, W[, 1|3]) -> (…, H, W, 3) given the stored rank."""
        if len(self._shape) == 3:
            return np.ascontiguousarray(np.repeat(block[..., None], 3, axis=-1))
        if self._shape[3] == 1:
            return np.ascontiguousarray(np.repeat(block, 3, axis=-1))
        return np.ascontiguousarray(block)

    def read(self, i: int) -> np.ndarray:
        return self._expand(np.asarray(self._array()[self._index(i)]))

    def read_batch(self, indices: Iterable[int]) -> np.ndarray:
        idx = self._indices(indices)
        if idx.size == 0:
            h, w = self._shape[1], self._shape[2]
            return np.zeros((0, h, w, 3), dtype=np.uint8)
        return self._expand(self._take(idx))

    def _take(self, idx: np.ndarray) -> np.ndarray:
        """A contiguous ascending run (what a shard of the copy-major layout asks for) is read
        as one slice: from a memory map that touches only those pages, in order."""
        first = int(idx[0])
        if idx[-1] - first + 1 == idx.size and (idx.size == 1 or bool(np.all(np.diff(idx) == 1))):
            return np.asarray(self._array()[first : first + idx.size])
        return np.asarray(self._array()[idx])

    def _compute_fingerprint(self) -> dict[str, Any]:
        files = {
            str(p): {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in self._files()
        }
        return {"format": self.format, "path": str(self.path), "files": files}

    def _files(self) -> list[Path]:
        return [self.path]


def _read_npy_header(handle: Any) -> tuple[tuple[int, ...], bool, np.dtype] | None:
    """(shape, fortran order, dtype) of the .npy data starting at ``handle``'s position, which
    is left at the first data byte; None for an .npy version numpy may add later."""
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
    else:
        return None
    return tuple(shape), bool(fortran), dtype


def _npz_member_header(path: Path, key: str) -> tuple[tuple[int, ...], np.dtype] | None:
    """Shape and dtype of ``key`` inside an .npz without loading the data (None if unknown)."""
    try:
        with zipfile.ZipFile(path) as zf, zf.open(key + ".npy") as member:
            header = _read_npy_header(member)
            return None if header is None else (header[0], header[2])
    except (KeyError, ValueError, OSError, zipfile.BadZipFile):
        return None


def _npz_member_memmap(path: Path, key: str) -> np.ndarray | None:
    """Memory-map ``key`` of an uncompressed .npz in place (None if it is compressed or
    unusual): ``np.savez`` stores members verbatim, so a worker maps the pages it reads instead
    of loading the whole array (150 MB for CIFAR-10) into every process before its first shard."""
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo(key + ".npy")
            if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
                return None
        with open(path, "rb") as handle:
            handle.seek(info.header_offset)
            local = handle.read(30)
            if local[:4] != b"PK\x03\x04":
                return None
            name_len = int.from_bytes(local[26:28], "little")
            extra_len = int.from_bytes(local[28:30], "little")
            handle.seek(info.header_offset + 30 + name_len + extra_len)
            header = _read_npy_header(handle)
            if header is None:
                return None
            shape, fortran, dtype = header
            offset = handle.tell()
        member_end = info.header_offset + 30 + name_len + extra_len + info.file_size
        count = int(np.prod(shape, dtype=np.int64))
        if fortran or dtype.hasobject or offset + count * dtype.itemsize > member_end:
            return None
        if count == 0:
            return np.zeros(shape, dtype=dtype)
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=tuple(shape))
    except (KeyError, ValueError, OSError, zipfile.BadZipFile):
        return None


class NpzSource(ArraySource):
    """``.npz`` archives; the images array is loaded into memory once per process."""

    format = "npz"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            with np.load(path, allow_pickle=False) as npz:
                keys = set(npz.files)
                image_key = next((k for k in ("images", "x") if k in keys), None)
                label_key = next((k for k in ("labels", "y") if k in keys), None)
                if image_key is None or label_key is None:
                    raise SourceError(
                        path,
                        "npz needs arrays 'images' (or 'x') and 'labels' (or 'y'); "
                        f"found {', '.join(sorted(keys)) or 'none'}",
                    )
                header = _npz_member_header(path, image_key)
                if header is None:  # unusual npy version: load once to learn the shape
                    arr = npz[image_key]
                    header = (arr.shape, arr.dtype)
                self._set_images(image_key, *header)
                self.labels = _check_labels(path, npz[label_key], self._shape[0], label_key)
                names = _names(npz["class_names"]) if "class_names" in keys else []
        except IpmixError:
            raise
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            raise SourceError(path, f"not a readable .npz file ({one_line(error)})") from None
        self.class_names = _class_names(path, self.labels, names)

    def _array(self) -> np.ndarray:
        arr = self.__dict__.get("_cache_images")
        if arr is None:
            with _LAZY_LOAD:
                arr = self.__dict__.get("_cache_images")
                if arr is None:
                    arr = _npz_member_memmap(self.path, self.image_key)
                    if arr is None:  # compressed (np.savez_compressed): decompress it once
                        with np.load(self.path, allow_pickle=False) as npz:
                            arr = npz[self.image_key]
                    self._cache_images = arr
        return arr


class NpySource(ArraySource):
    """``.npy`` images (memory-mapped) + labels from a sibling or explicit ``.npy`` file."""

    format = "npy"

    def __init__(self, path: Path, *, labels_path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(path)
        arr = _load_npy(path, mmap=True)
        self._set_images("images", arr.shape, arr.dtype)
        if labels_path is None:
            lp = path.with_name(path.stem + "_labels.npy")
            if not lp.is_file():
                raise SourceError(
                    path, f"no labels: expected sibling {lp.name} or an explicit labels path"
                )
        else:
            lp = Path(labels_path).absolute()
            if not lp.is_file():
                raise SourceError(lp, "labels file does not exist")
        self.labels_path = lp
        self.labels = _check_labels(lp, _load_npy(lp, mmap=False), self._shape[0])
        names_path = path.with_name(path.stem + "_class_names.txt")
        names: list[str] = []
        if names_path.is_file():
            names = [ln.strip() for ln in names_path.read_text("utf-8").splitlines() if ln.strip()]
        self.class_names = _class_names(path, self.labels, names)

    def _array(self) -> np.ndarray:
        arr = self.__dict__.get("_cache_images")
        if arr is None:
            arr = _load_npy(self.path, mmap=True)
            self._cache_images = arr
        return arr

    def _files(self) -> list[Path]:
        return [self.path, self.labels_path]

    def _options(self) -> dict[str, Any]:
        return {"labels_path": str(self.labels_path)}


def _load_npy(path: Path, *, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise SourceError(path, f"not a readable .npy file ({one_line(error)})") from None


def _h5_strings(value: Any) -> list[str]:
    if isinstance(value, (str, bytes)):
        import json

        text = value.decode() if isinstance(value, bytes) else value
        try:
            parsed = json.loads(text)
        except ValueError:
            return [text]
        return _names(parsed) if isinstance(parsed, list) else [text]
    return _names(np.asarray(value).ravel().tolist())


class Hdf5Source(ArraySource):
    """HDF5 files with ``images``/``labels`` (our own output entry files included)."""

    format = "hdf5"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        import h5py

        from ipmix_cli import shards

        try:
            with h5py.File(path, "r") as f:
                if f.attrs.get("kind") == shards.ENTRY_KIND:
                    shards.check_output(path)  # no silently zero-filled missing shards
                keys = set(f.keys())
                image_key = next((k for k in ("images", "x") if k in keys), None)
                label_key = next((k for k in ("labels", "y") if k in keys), None)
                if image_key is None or label_key is None:
                    raise SourceError(
                        path,
                        "HDF5 file needs datasets 'images' (or 'x') and 'labels' (or 'y'); "
                        f"found {', '.join(sorted(keys)) or 'none'}",
                    )
                dset = f[image_key]
                if not isinstance(dset, h5py.Dataset):
                    raise SourceError(path, f"'{image_key}' is a group, not a dataset")
                self._set_images(image_key, dset.shape, dset.dtype)
                lab = f[label_key]
                self.label_key = label_key
                self.labels = _check_labels(path, lab[()], self._shape[0], label_key)
                raw = f.attrs.get("class_names", lab.attrs.get("class_names"))
                names = _h5_strings(raw) if raw is not None else []
        except IpmixError:
            raise
        except (OSError, ValueError, KeyError) as error:
            raise SourceError(path, f"not a readable HDF5 file ({one_line(error)})") from None
        self.class_names = _class_names(path, self.labels, names)

    def _array(self) -> Any:
        handle = self.__dict__.get("_cache_h5")
        if handle is not None and self.__dict__.get("_cache_pid") != os.getpid():
            _ABANDONED_HANDLES.append(handle)  # inherited through fork: do not touch
            handle = None
        if handle is None:
            import h5py

            with _LAZY_LOAD:
                handle = self.__dict__.get("_cache_h5")
                if handle is None or self.__dict__.get("_cache_pid") != os.getpid():
                    handle = h5py.File(self.path, "r")
                    self._cache_h5 = handle
                    self._cache_pid = os.getpid()
        return handle[self.image_key]

    def _take(self, idx: np.ndarray) -> np.ndarray:
        """h5py wants increasing unique indices: read those (a slice if contiguous), reorder."""
        dset = self._array()
        uniq, inverse = np.unique(idx, return_inverse=True)
        if uniq[-1] - uniq[0] + 1 == len(uniq):
            block = dset[int(uniq[0]) : int(uniq[-1]) + 1]
        else:
            block = dset[uniq]
        return block[inverse]

    def close(self) -> None:
        handle = self.__dict__.pop("_cache_h5", None)
        if handle is not None and self.__dict__.get("_cache_pid") == os.getpid():
            handle.close()
        super().close()


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def detect_format(path: str | os.PathLike[str]) -> str:
    """Guess the input format of ``path`` (see the module doc); SourceError if unknown."""
    p = Path(path)
    if not p.exists():
        raise SourceError(p, "no such file or folder")
    if p.is_dir():
        return "cifar" if _cifar_variant(p) else "folder"
    suffix = p.suffix.lower()
    if suffix == ".npz":
        return "npz"
    if suffix == ".npy":
        return "npy"
    if suffix in HDF5_SUFFIXES:
        return "hdf5"
    try:
        with open(p, "rb") as handle:
            head = handle.read(8)
    except OSError as error:
        raise SourceError(p, f"cannot read file ({error.strerror or error})") from None
    if head == HDF5_MAGIC:
        return "hdf5"
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head.startswith(b"PK\x03\x04"):
        return "npz"
    raise SourceError(
        p,
        "unknown input format (expected a folder of class subfolders, a CIFAR directory, "
        ".npz, .npy or an HDF5 file)",
    )


def open_source(
    path: str | os.PathLike[str],
    input_format: str | None = None,
    on_error: str = "fail",
    *,
    split: str = "train",
    labels_path: str | os.PathLike[str] | None = None,
    validate: bool = True,
    n_jobs: int = 1,
) -> Source:
    """Open a labelled image data set, auto-detecting its format unless ``input_format`` is given.

    ``on_error``: ``"fail"`` stops at the first unreadable image with a one-line
    :class:`SourceError` naming it; ``"skip"`` leaves such files out (they are listed in
    ``source.skipped`` and do not count in ``len`` / ``labels``). It applies to per-file problems
    in image folders; a broken array file is always an error.

    ``split`` selects the CIFAR split; ``labels_path`` gives the labels of a ``.npy`` input.
    ``validate`` (folders only): decode every image now (default) so truncated files are found
    before any work starts and the content hash comes for free; ``False`` reads headers only
    (fast for huge folders; a file that then fails to decode raises when it is read).
    ``n_jobs`` parallelises that scan with joblib.
    """
    p = Path(path).absolute()
    if on_error not in ON_ERROR:
        raise SourceError(p, f"unknown on_error {on_error!r} (choose 'fail' or 'skip')")
    if input_format is not None and input_format not in FORMATS:
        raise SourceError(
            p, f"unknown input format {input_format!r} (choose from {', '.join(FORMATS)})"
        )
    if not p.exists():
        raise SourceError(p, "no such file or folder")
    fmt = input_format or detect_format(p)
    if fmt in ("folder", "cifar") and not p.is_dir():
        raise SourceError(p, f"input format '{fmt}' needs a folder, this is a file")
    if fmt in ("npz", "npy", "hdf5") and not p.is_file():
        raise SourceError(p, f"input format '{fmt}' needs a file, this is a folder")
    if fmt == "folder":
        return FolderSource(p, on_error=on_error, validate=validate, n_jobs=n_jobs)
    if fmt == "cifar":
        return CifarSource(p, split=split)
    if fmt == "npz":
        return NpzSource(p)
    if fmt == "npy":
        return NpySource(p, labels_path=labels_path)
    return Hdf5Source(p)


def open_mixing_set(path: str | os.PathLike[str], limit: int | None = None) -> list[np.ndarray]:
    """Load a mixing set (e.g. a fractal bank) as a list of uint8 (H, W, 3) images.

    ``path`` is a folder of pictures (searched recursively, sorted by relative path, hidden
    entries skipped, non-image files such as ``manifest.json`` ignored; a folder with no pictures
    but an HDF5 bank file such as ``fractals.h5`` uses that), or an HDF5 file with an ``images``
    (N, H, W, 3) / (N, H, W) uint8 dataset. Images may differ in size. Any undecodable picture
    is an error naming it: a mixing set is small and should be clean. ``limit`` keeps only the
    first pictures (a preview need not decode a whole bank).
    """
    p = Path(path).absolute()
    if not p.exists():
        raise SourceError(p, "mixing set does not exist")
    if p.is_dir():
        files: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(p):
            dirnames[:] = [d for d in dirnames if not _is_hidden(d)]
            files.extend(
                Path(dirpath) / f for f in filenames if not _is_hidden(f) and is_image_name(f)
            )
        files.sort(key=lambda f: f.relative_to(p).as_posix())
        if files:
            return [decode_image(f) for f in files[:limit]]
        banks = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in HDF5_SUFFIXES)
        if len(banks) == 1:
            return open_mixing_set(banks[0], limit)
        raise SourceError(p, "mixing set holds no images")
    import h5py

    try:
        with h5py.File(p, "r") as f:
            if "images" not in f:
                raise SourceError(p, "mixing-set HDF5 file has no 'images' dataset")
            dset = f["images"]
            _check_images(p, "images", dset.shape, dset.dtype)
            arr = dset[:limit]
    except IpmixError:
        raise
    except OSError as error:
        raise SourceError(p, f"not a readable HDF5 file ({one_line(error)})") from None
    if arr.ndim == 3:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    elif arr.shape[3] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return [np.ascontiguousarray(a) for a in arr]
