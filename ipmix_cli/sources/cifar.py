"""CIFAR-10 / CIFAR-100 "python version" pickle folders.

Pickles are loaded with a restricted unpickler that only rebuilds numpy arrays, so a hostile
file cannot run code.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ipmix_cli.errors import SourceError
from ipmix_cli.sources.base import LAZY_LOAD, Source, as_names, check_labels, class_names_for

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


def cifar_variant(root: Path) -> str | None:
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
        variant = cifar_variant(root)
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
            lab = check_labels(path, lab, data.shape[0], label_key)
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
            names = as_names(meta.get(names_key, []), meta_path, f"'{names_key}'")
        self.class_names = class_names_for(root, self.labels, names)
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
            with LAZY_LOAD:
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
