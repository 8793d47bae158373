"""HDF5 shards out: atomic per-shard writes, a virtual entry file, and integrity checks.

The on-disk format is a public interface, specified in ``docs/format.md`` (keep the two in step
and bump :data:`FORMAT_VERSION` on any incompatible change). In short::

    OUT.h5                     entry file: virtual datasets over all shards + JSON manifest
    OUT.shards/shard-00000.h5  one file per shard, written by the worker that made it, then renamed
    OUT.shards/shard-00001.h5
    ...

Design choices and why:

* One file per shard, written under a temporary name then renamed, so a killed run leaves only
  complete shards and ``--resume`` can keep them (:func:`shard_is_valid`).
* The entry file joins shards with HDF5 *virtual datasets* using paths relative to the entry
  file, so plain h5py (or any HDF5 >= 1.10 reader) sees ``images`` as one (N, H, W, 3) array and
  the output folder can be moved as a whole.
* HDF5 fills a virtual dataset's missing source with its fill value. ``labels``,
  ``source_index`` and ``copy_index`` therefore use fill value -1 (never a valid value), and our
  own readers (:func:`open_output`, ``open_source``) check every shard before handing out data.
* Every shard carries a CRC-32 checksum of its datasets (also recorded in the entry manifest),
  so :func:`verify` catches bit rot, truncation and accidental edits. CRC-32 rather than a
  cryptographic hash: this guards against corruption, not an attacker, at a third of the cost.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ipmix_cli.atomic import atomic_path, commit_temporary, temporary_sibling
from ipmix_cli.errors import ShardError, one_line

__all__ = [
    "CHECKSUM_ORDER",
    "DEFAULT_CHUNK_BYTES",
    "ENTRY_KIND",
    "FORMAT_VERSION",
    "JSD_DATASETS",
    "SHARD_KIND",
    "STANDARD_DATASETS",
    "Output",
    "ShardInfo",
    "VerifyReport",
    "check_output",
    "compute_checksum",
    "inspect",
    "open_output",
    "read_shard_info",
    "shard_checksum",
    "shard_dir",
    "shard_filename",
    "shard_is_valid",
    "shard_path",
    "verify",
    "write_entry",
    "write_shard",
]

FORMAT_VERSION = 1
"""Version of the shard/entry layout; readers refuse files with a larger number."""

ENTRY_KIND = "ipmix-entry"
SHARD_KIND = "ipmix-shard"
STANDARD_DATASETS = ("images", "labels", "source_index", "copy_index")
JSD_DATASETS = ("clean", "images2")
IMAGE_DATASETS = ("images", "clean", "images2")
INDEX_DATASETS = ("labels", "source_index", "copy_index")
CHECKSUM_ORDER = ("images", "clean", "images2", "labels", "source_index", "copy_index")
"""Order in which datasets enter a shard checksum (absent ones are left out)."""

CHECKSUM_METHOD = (
    "crc32 (zlib's CRC-32, as in gzip and PNG), stored as 'crc32:' and 8 lower-case hex digits; "
    "for each dataset present, in the order images, clean, images2, labels, source_index, "
    "copy_index: the ASCII line '<name> <dtype> <d0>,<d1>,...\\n' then the raw C-order "
    "little-endian bytes"
)
DEFAULT_CHUNK_BYTES = 512 * 1024
"""Target size of one ``images`` chunk: several whole images, big enough for fast sequential
batched reads, small enough to fit h5py's default 1 MiB chunk cache."""

COMPRESSIONS = (None, "none", "lzf", "gzip")
FILL_INDEX = -1
_RESERVED_ATTRS = {
    "kind",
    "format_version",
    "shard_index",
    "count",
    "checksum",
    "checksum_method",
    "mode",
}
_SHARD_RE = re.compile(r"^shard-(\d{5,})\.h5$")
_HASH_BLOCK_BYTES = 64 * 1024 * 1024
_INHERITED: list[Any] = []  # h5py handles inherited through fork, kept alive and untouched


# --------------------------------------------------------------------------------------------
# Names and paths
# --------------------------------------------------------------------------------------------


def shard_filename(index: int) -> str:
    """``shard-00000.h5`` style name for shard ``index`` (at least five digits)."""
    return f"shard-{int(index):05d}.h5"


def shard_dir(entry_path: str | os.PathLike[str]) -> Path:
    """The shard folder of an entry file: ``OUT.h5`` -> ``OUT.shards`` (same parent)."""
    entry = Path(entry_path)
    return entry.with_name(entry.stem + ".shards")


def shard_path(entry_path: str | os.PathLike[str], index: int) -> Path:
    """Where shard ``index`` of ``entry_path`` lives."""
    return shard_dir(entry_path) / shard_filename(index)


# --------------------------------------------------------------------------------------------
# Shard info and checksums
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardInfo:
    """What the entry file needs to know about one written shard.

    ``file`` is the shard's file name (inside the entry's ``.shards`` folder); ``image_shape``
    is (H, W); ``mode`` is ``"standard"`` or ``"jsd"``.
    """

    index: int
    file: str
    count: int
    checksum: str
    image_shape: tuple[int, int]
    mode: str = "standard"
    attrs: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (used in manifests and resume records)."""
        d = asdict(self)
        d["image_shape"] = list(self.image_shape)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ShardInfo:
        """Inverse of :meth:`to_dict`."""
        return cls(
            index=int(d["index"]),
            file=str(d["file"]),
            count=int(d["count"]),
            checksum=str(d["checksum"]),
            image_shape=(int(d["image_shape"][0]), int(d["image_shape"][1])),
            mode=str(d.get("mode", "standard")),
            attrs=dict(d.get("attrs", {})),
        )


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
    twice as long in ``verify``); zlib's CRC-32 runs at ~3 GB/s and every language has it."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: Any) -> None:
        self.value = zlib.crc32(data, self.value)

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


def _method_of(checksum: str) -> str:
    return checksum.split(":", 1)[0] if ":" in checksum else ""


def compute_checksum(arrays: Mapping[str, np.ndarray], method: str = "crc32") -> str:
    """Checksum of in-memory shard arrays: ``"crc32:<hex>"`` (recipe: :data:`CHECKSUM_METHOD`)."""
    digest = _hasher(method)
    for name in CHECKSUM_ORDER:
        if name in arrays:
            arr = np.asarray(arrays[name])
            digest.update(_header(name, arr.dtype, arr.shape))
            digest.update(_le(arr))
    return f"{method}:{digest.hexdigest()}"


def _file_checksum(f: h5py.File, method: str = "crc32") -> str:
    digest = _hasher(method)
    for name in CHECKSUM_ORDER:
        if name not in f:
            continue
        dset = f[name]
        digest.update(_header(name, dset.dtype, dset.shape))
        n = dset.shape[0]
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
            return _file_checksum(f, method or _method_of(stored) or "crc32")
    except (OSError, KeyError, ValueError) as error:
        raise ShardError(p, f"unreadable (truncated or corrupt): {one_line(error, 160)}") from None


def _attr_value(value: Any) -> Any:
    """Map a Python value to what we store as an HDF5 attribute (JSON for nested data)."""
    if isinstance(value, (list, tuple)) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        return list(value)
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=_json_default)
    if isinstance(value, (Path, os.PathLike)):
        return os.fspath(value)
    return value


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

    tmp: Path
    path: Path
    info: ShardInfo

    def commit(self) -> ShardInfo:
        """fsync the file, rename it to its final name, fsync the folder; on any failure (an
        interrupt included) the temporary file goes and the final name is left as it was."""
        try:
            commit_temporary(self.tmp, self.path)
        except BaseException:
            self.discard()
            raise
        return self.info

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


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

    The augment job has its workers write pending shards and commits them in the parent: the
    fsync waits on the disk for ~30 ms a shard, which a worker would otherwise spend idle
    instead of computing the next shard.
    """
    p = Path(path)
    if index is None:
        m = _SHARD_RE.match(p.name)
        if not m:
            raise ShardError(p, "cannot tell the shard index from the name; pass index=")
        index = int(m.group(1))
    if compression not in COMPRESSIONS:
        raise ShardError(p, f"unknown compression {compression!r} (none, lzf or gzip)")
    extra = dict(attrs or {})
    clash = _RESERVED_ATTRS & set(extra)
    if clash:
        raise ShardError(p, f"reserved shard attributes cannot be set: {', '.join(sorted(clash))}")
    data, mode = _check_arrays(p, arrays)
    checksum = compute_checksum(data)
    n, h, w, _ = data["images"].shape
    filters: dict[str, Any] = {}
    if compression == "gzip":
        filters = {"compression": "gzip", "compression_opts": int(compression_level)}
    elif compression == "lzf":
        filters = {"compression": "lzf"}
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(p)
    try:
        _write_shard_file(tmp, data, filters, chunk_bytes, index, mode, checksum, extra)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    stored = {k: _decode_attr(_attr_value(v)) for k, v in extra.items()}  # as read back
    info = ShardInfo(int(index), p.name, int(n), checksum, (int(h), int(w)), mode, stored)
    return PendingShard(tmp, p, info)


def _write_shard_file(
    tmp: Path,
    data: Mapping[str, np.ndarray],
    filters: Mapping[str, Any],
    chunk_bytes: int,
    index: int,
    mode: str,
    checksum: str,
    extra: Mapping[str, Any],
) -> None:
    n = data["images"].shape[0]
    with h5py.File(tmp, "w") as f:
        for name in (*IMAGE_DATASETS, *INDEX_DATASETS):
            if name not in data:
                continue
            arr = data[name]
            if name in IMAGE_DATASETS:
                chunks = _image_chunks(arr.shape, chunk_bytes)
                dataset = f.create_dataset(name, data=arr, chunks=chunks, **filters)
            else:
                dataset = f.create_dataset(name, data=arr)
            # Where HDF5 places a chunk must not depend on when the Python object is freed
            # (a profiler thread holding it moved the chunk to file close): flush it now.
            dataset.flush()
        f.attrs["kind"] = SHARD_KIND
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["shard_index"] = int(index)
        f.attrs["count"] = int(n)
        f.attrs["mode"] = mode
        f.attrs["checksum"] = checksum
        f.attrs["checksum_method"] = CHECKSUM_METHOD
        for key, value in extra.items():
            f.attrs[key] = _attr_value(value)
        f.flush()


def _decode_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def read_shard_info(path: str | os.PathLike[str]) -> ShardInfo:
    """Read a shard's :class:`ShardInfo` from its attributes (cheap: no data read or hashed)."""
    p = Path(path)
    if not p.is_file():
        raise ShardError(p, "shard is missing")
    try:
        with h5py.File(p, "r") as f:
            a = {k: _decode_attr(v) for k, v in f.attrs.items()}
            shape = f["images"].shape if "images" in f else None
    except (OSError, KeyError, ValueError) as error:
        raise ShardError(p, f"unreadable (truncated or corrupt): {one_line(error, 160)}") from None
    if a.get("kind") != SHARD_KIND:
        raise ShardError(p, "not an ipmix shard (no kind='ipmix-shard' attribute)")
    if int(a.get("format_version", 0)) > FORMAT_VERSION:
        raise ShardError(
            p, f"shard format {a.get('format_version')} is newer than this ipmix ({FORMAT_VERSION})"
        )
    if shape is None or len(shape) != 4:
        raise ShardError(p, "shard has no (n, H, W, 3) 'images' dataset")
    extra = {k: v for k, v in a.items() if k not in _RESERVED_ATTRS}
    return ShardInfo(
        index=int(a["shard_index"]),
        file=p.name,
        count=int(a["count"]),
        checksum=str(a["checksum"]),
        image_shape=(int(shape[1]), int(shape[2])),
        mode=str(a.get("mode", "standard")),
        attrs=extra,
    )


def shard_is_valid(
    path: str | os.PathLike[str],
    expected: ShardInfo | Mapping[str, Any] | int,
    *,
    deep: bool = True,
) -> bool:
    """Resume check: may the shard at ``path`` be kept instead of being recomputed?

    ``expected`` is the planned count (an int), or a :class:`ShardInfo` / mapping with ``count``
    and optionally ``index``, ``checksum``, ``image_shape``, ``mode`` and ``attrs`` (every listed
    attribute must match, e.g. a config hash). With ``deep`` the data are re-hashed and must match
    the shard's stored checksum, which catches truncation and bit flips. Never raises for a bad
    shard: anything missing, unreadable or different is simply ``False``.
    """
    if isinstance(expected, ShardInfo):
        want: dict[str, Any] = expected.to_dict()
    elif isinstance(expected, Mapping):
        want = dict(expected)
    else:
        want = {"count": int(expected)}
    try:
        info = read_shard_info(path)
    except ShardError:
        return False
    if info.count != int(want["count"]):
        return False
    if "index" in want and info.index != int(want["index"]):
        return False
    if want.get("checksum") and info.checksum != want["checksum"]:
        return False
    if want.get("image_shape") and tuple(info.image_shape) != tuple(want["image_shape"]):
        return False
    if want.get("mode") and info.mode != want["mode"]:
        return False
    for key, value in dict(want.get("attrs") or {}).items():
        if info.attrs.get(key) != _decode_attr(_attr_value(value)):
            return False
    if deep:
        try:
            return shard_checksum(path) == info.checksum
        except ShardError:
            return False
    return True


# --------------------------------------------------------------------------------------------
# Entry file
# --------------------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (Path, os.PathLike)):
        return os.fspath(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if hasattr(value, "to_dict"):
        return value.to_dict()
    raise TypeError(f"cannot store {type(value).__name__} in the manifest")


def _tool_version() -> str:
    try:
        from ipmix_cli import __version__

        return str(__version__)
    except ImportError:  # pragma: no cover - package without a version attribute
        return "unknown"


class _UntimedLayout(h5py.VirtualLayout):
    """h5py stamps virtual datasets with their creation time, so two identical runs would give
    entry files that differ in four bytes; switching the stamp off keeps outputs byte-identical
    (shards are written with ``track_times`` off for the same reason)."""

    def _get_dcpl(self, dst_filename: str) -> Any:
        dcpl = super()._get_dcpl(dst_filename)
        dcpl.set_obj_track_times(False)
        return dcpl


def write_entry(
    entry_path: str | os.PathLike[str],
    shard_infos: Iterable[ShardInfo | Mapping[str, Any]],
    manifest: Mapping[str, Any],
    *,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Write the entry file ``OUT.h5`` joining the shards in ``OUT.shards/``; return the manifest.

    ``shard_infos`` (from :func:`write_shard` / :func:`read_shard_info`) must number the shards
    0..k-1; each shard must exist and carry the recorded count and checksum. ``manifest`` is the
    caller's record (config, seed, source fingerprint, skipped files, ...); this function adds
    ``format_version``, ``kind``, ``tool``, ``tool_version``, ``count``, ``mode``,
    ``image_shape``, ``class_names``, ``shards_dir`` and ``shards`` and stores the result as the
    JSON string attribute ``manifest``. The entry is written atomically.
    """
    entry = Path(entry_path)
    infos = sorted(
        (s if isinstance(s, ShardInfo) else ShardInfo.from_dict(s) for s in shard_infos),
        key=lambda s: s.index,
    )
    if not infos:
        raise ShardError(entry, "no shards to join")
    if [s.index for s in infos] != list(range(len(infos))):
        raise ShardError(entry, "shard indices must be 0..k-1 without gaps or repeats")
    shapes = {s.image_shape for s in infos}
    modes = {s.mode for s in infos}
    if len(shapes) != 1 or len(modes) != 1:
        raise ShardError(entry, f"shards disagree on image shape {shapes} or mode {modes}")
    (h, w), mode = shapes.pop(), modes.pop()
    folder = shard_dir(entry)
    for s in infos:
        on_disk = read_shard_info(folder / s.file)  # exists, readable, an ipmix shard
        if (on_disk.count, on_disk.checksum) != (s.count, s.checksum):
            raise ShardError(
                folder / s.file,
                f"holds {on_disk.count} images / {on_disk.checksum}, "
                f"expected {s.count} / {s.checksum}",
            )
    names = list(class_names if class_names is not None else manifest.get("class_names") or [])
    total = sum(s.count for s in infos)
    starts = np.cumsum([0] + [s.count for s in infos])
    rel_files = [f"{folder.name}/{s.file}" for s in infos]
    full = dict(manifest)
    full.update(
        {
            "format_version": FORMAT_VERSION,
            "kind": ENTRY_KIND,
            "tool": "ipmix",
            "tool_version": _tool_version(),
            "count": int(total),
            "mode": mode,
            "image_shape": [int(h), int(w), 3],
            "class_names": names,
            "shards_dir": folder.name,
            "shards": [
                {
                    "index": s.index,
                    "file": rel,
                    "start": int(start),
                    "count": s.count,
                    "checksum": s.checksum,
                }
                for s, rel, start in zip(infos, rel_files, starts, strict=False)
            ],
        }
    )
    text = json.dumps(full, sort_keys=True, default=_json_default)
    datasets = STANDARD_DATASETS + (JSD_DATASETS if mode == "jsd" else ())
    entry.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(entry) as tmp, h5py.File(tmp, "w") as f:
        for name in datasets:
            is_image = name in IMAGE_DATASETS
            shape = (total, h, w, 3) if is_image else (total,)
            dtype = np.uint8 if is_image else np.int64
            layout = _UntimedLayout(shape=shape, dtype=dtype)
            for s, rel, start in zip(infos, rel_files, starts, strict=False):
                src_shape = (s.count, h, w, 3) if is_image else (s.count,)
                layout[int(start) : int(start) + s.count] = h5py.VirtualSource(
                    rel, name, shape=src_shape
                )
            f.create_virtual_dataset(name, layout, fillvalue=0 if is_image else FILL_INDEX)
        f.attrs["kind"] = ENTRY_KIND
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["count"] = int(total)
        f.attrs["mode"] = mode
        f.attrs["num_shards"] = len(infos)
        f.attrs["shards_dir"] = folder.name
        f.attrs["shard_files"] = np.array(rel_files, dtype=h5py.string_dtype())
        f.attrs["shard_counts"] = np.array([s.count for s in infos], dtype=np.int64)
        f.attrs["class_names"] = np.array(names, dtype=h5py.string_dtype())
        f.attrs["manifest"] = text
        f.flush()
    return full


# --------------------------------------------------------------------------------------------
# Reading back
# --------------------------------------------------------------------------------------------


def _read_entry(entry: Path) -> dict[str, Any]:
    """The manifest of an entry file, after checking it is one we can read."""
    if not entry.exists():
        raise ShardError(entry, "output entry file does not exist")
    try:
        with h5py.File(entry, "r") as f:
            kind = _decode_attr(f.attrs.get("kind"))
            version = _decode_attr(f.attrs.get("format_version"))
            text = _decode_attr(f.attrs.get("manifest"))
    except (OSError, ValueError) as error:
        raise ShardError(entry, f"unreadable entry file: {one_line(error, 160)}") from None
    if kind != ENTRY_KIND or text is None:
        raise ShardError(entry, "not an ipmix output entry file (no kind='ipmix-entry')")
    if int(version) > FORMAT_VERSION:
        raise ShardError(
            entry, f"written in shard format {version}; this ipmix reads up to {FORMAT_VERSION}"
        )
    try:
        manifest = json.loads(text)
    except ValueError as error:
        raise ShardError(entry, f"manifest attribute is not valid JSON ({error})") from None
    return manifest


def check_output(entry_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check that every shard of an output exists with its recorded count; return the manifest.

    This is the guard against HDF5 silently filling a missing shard with zeros. It reads
    attributes only (fast); :func:`verify` also re-hashes the data.
    """
    entry = Path(entry_path).absolute()
    manifest = _read_entry(entry)
    for s in manifest["shards"]:
        p = entry.parent / s["file"]
        if not p.is_file():
            raise ShardError(p, f"shard is missing (it should hold {s['count']} images)")
        info = read_shard_info(p)
        if info.count != int(s["count"]):
            raise ShardError(
                p, f"shard holds {info.count} images, the entry file records {s['count']}"
            )
        if info.checksum != s["checksum"]:
            raise ShardError(p, "shard was replaced: its checksum differs from the entry's record")
    return manifest


class Output:
    """A checked, read-only view of an ipmix output (see :func:`open_output`).

    ``images`` etc. are h5py datasets over the entry's virtual datasets (slice them to read);
    ``labels`` is loaded eagerly. Picklable: the HDF5 handle is re-opened per process.
    """

    def __init__(self, entry: Path, manifest: dict[str, Any]) -> None:
        self.path = entry
        self.manifest = manifest
        self.class_names: list[str] = list(manifest.get("class_names", []))
        self.mode: str = manifest.get("mode", "standard")
        self.count = int(manifest["count"])
        self.image_shape = tuple(manifest["image_shape"])
        self.datasets = STANDARD_DATASETS + (JSD_DATASETS if self.mode == "jsd" else ())
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


# --------------------------------------------------------------------------------------------
# Verify and inspect
# --------------------------------------------------------------------------------------------


@dataclass
class VerifyReport:
    """Result of :func:`verify`: ``faults`` (data problems) and ``warnings`` (harmless leftovers).

    Each entry is a one-line message starting with the file it is about.
    """

    path: str
    count: int = 0
    num_shards: int = 0
    shards_checked: int = 0
    faults: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no fault was found."""
        return not self.faults

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = asdict(self)
        d["ok"] = self.ok
        return d


def _verify_shard(
    p: Path,
    rec: Mapping[str, Any],
    mode: str,
    image_shape: Sequence[int],
    n_classes: int,
    deep: bool,
) -> list[str]:
    faults: list[str] = []
    name = str(p)
    if not p.is_file():
        return [
            f"{name}: shard is missing (recorded {rec['count']} images; plain HDF5 readers "
            "see zero images and label -1 there)"
        ]
    want_sets = STANDARD_DATASETS + (JSD_DATASETS if mode == "jsd" else ())
    n = int(rec["count"])
    try:
        with h5py.File(p, "r") as f:
            a = {k: _decode_attr(v) for k, v in f.attrs.items()}
            if a.get("kind") != SHARD_KIND:
                faults.append(f"{name}: not an ipmix shard (kind={a.get('kind')!r})")
            if a.get("shard_index") != rec["index"]:
                faults.append(f"{name}: shard_index {a.get('shard_index')} != {rec['index']}")
            if a.get("count") != n:
                faults.append(f"{name}: count attribute {a.get('count')}, entry records {n}")
            if a.get("checksum") != rec["checksum"]:
                faults.append(f"{name}: stored checksum differs from the entry's record")
            h, w = int(image_shape[0]), int(image_shape[1])
            for ds in want_sets:
                if ds not in f:
                    faults.append(f"{name}: dataset '{ds}' is missing")
                    continue
                dset = f[ds]
                is_img = ds in IMAGE_DATASETS
                shape = (n, h, w, 3) if is_img else (n,)
                dtype = np.dtype(np.uint8) if is_img else np.dtype(np.int64)
                if dset.shape != shape or dset.dtype != dtype:
                    faults.append(
                        f"{name}: '{ds}' is {dset.dtype} {dset.shape}, expected {dtype} {shape}"
                    )
            if faults:
                return faults
            for ds in INDEX_DATASETS:
                values = f[ds][()]
                if values.size and values.min() < 0:
                    faults.append(f"{name}: '{ds}' has negative values")
            labels = f["labels"][()]
            if n_classes and labels.size and labels.max() >= n_classes:
                faults.append(
                    f"{name}: label {int(labels.max())} out of range for {n_classes} classes"
                )
            if deep:
                actual = _file_checksum(f, _method_of(rec["checksum"]))
                if actual != rec["checksum"]:
                    faults.append(
                        f"{name}: checksum mismatch (data changed or corrupt): "
                        f"recorded {rec['checksum'][:23]}..., computed {actual[:23]}..."
                    )
    except (OSError, KeyError, ValueError, RuntimeError) as error:
        faults.append(f"{name}: unreadable (truncated or corrupt): {one_line(error, 160)}")
    return faults


def verify(entry_path: str | os.PathLike[str], *, deep: bool = True) -> VerifyReport:
    """Check an output end to end and list every fault found (does not stop at the first).

    Checks: every shard present and readable; attributes, dataset shapes and dtypes as the entry
    records; data checksums match (``deep``; reads everything); labels within the class names;
    counts add up; the entry's virtual datasets point at the recorded shard files. Raises
    :class:`ShardError` only when ``entry_path`` is not a readable ipmix entry file at all.
    """
    entry = Path(entry_path).absolute()
    manifest = _read_entry(entry)
    shards = manifest.get("shards", [])
    report = VerifyReport(str(entry), count=int(manifest["count"]), num_shards=len(shards))
    n_classes = len(manifest.get("class_names", []))
    mode = manifest.get("mode", "standard")
    image_shape = manifest["image_shape"]
    if sum(int(s["count"]) for s in shards) != report.count:
        report.faults.append(f"{entry}: shard counts do not add up to {report.count}")
    try:
        with h5py.File(entry, "r") as f:
            dset = f["images"]
            if dset.shape[0] != report.count:
                report.faults.append(
                    f"{entry}: 'images' has {dset.shape[0]} rows, not {report.count}"
                )
            mapped = [m.file_name for m in dset.virtual_sources()] if dset.is_virtual else []
            if mapped != [s["file"] for s in shards]:
                report.faults.append(f"{entry}: virtual datasets do not map the recorded shards")
    except (OSError, KeyError, ValueError) as error:
        report.faults.append(f"{entry}: unreadable entry datasets: {one_line(error, 160)}")
    for rec in shards:
        p = entry.parent / rec["file"]
        report.faults.extend(_verify_shard(p, rec, mode, image_shape, n_classes, deep))
        report.shards_checked += 1
    folder = entry.parent / manifest.get("shards_dir", shard_dir(entry).name)
    known = {Path(s["file"]).name for s in shards}
    if folder.is_dir():
        for extra in sorted(folder.iterdir()):
            if extra.name in known:
                continue
            if ".tmp-" in extra.name:
                report.warnings.append(
                    f"{extra}: leftover temporary file from an interrupted write"
                )
            else:
                report.warnings.append(f"{extra}: not part of this output")
    return report


def inspect(entry_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Summary of an output for humans and scripts (reads attributes only; never hashes).

    Keys: path, format_version, tool_version, count, mode, num_shards, image_shape, class_names,
    num_classes, bytes_on_disk (entry + shards present), missing_shards, config, seed, source,
    skipped, shards (index, file, start, count, checksum, bytes, exists).
    """
    entry = Path(entry_path).absolute()
    manifest = _read_entry(entry)
    shards = []
    total = entry.stat().st_size
    missing = 0
    for s in manifest.get("shards", []):
        p = entry.parent / s["file"]
        exists = p.is_file()
        size = p.stat().st_size if exists else 0
        missing += not exists
        total += size
        shards.append({**s, "bytes": size, "exists": exists})
    names = manifest.get("class_names", [])
    return {
        "path": str(entry),
        "format_version": manifest.get("format_version"),
        "tool_version": manifest.get("tool_version"),
        "count": manifest.get("count"),
        "mode": manifest.get("mode"),
        "num_shards": len(shards),
        "image_shape": manifest.get("image_shape"),
        "class_names": names,
        "num_classes": len(names),
        "bytes_on_disk": total,
        "missing_shards": missing,
        "config": manifest.get("config"),
        "seed": manifest.get("seed"),
        "source": manifest.get("source"),
        "skipped": manifest.get("skipped", []),
        "shards": shards,
    }
