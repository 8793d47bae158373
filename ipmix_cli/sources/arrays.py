"""Array files: ``.npz``, ``.npy`` (memory-mapped) and HDF5 (our own outputs included).

Images are one (N, H, W), (N, H, W, 1) or (N, H, W, 3) uint8 array; labels (N,) or (N, 1)
integers. Uncompressed ``.npz`` members are memory-mapped in place, so a worker maps the pages
it reads instead of loading a whole array into every process.
"""

from __future__ import annotations

import errno
import os
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ipmix_cli.errors import IpmixError, SourceError, one_line
from ipmix_cli.fs.digest_cache import sha256_file
from ipmix_cli.fs.probe import lookup_problem
from ipmix_cli.fs.regular import path_kind
from ipmix_cli.sources.base import (
    ABANDONED_HANDLES,
    LAZY_LOAD,
    Source,
    as_names,
    check_labels,
    class_names_for,
    path_exists,
)
from ipmix_cli.sources.file_array import FileArray


def check_images(path: Path, key: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
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


_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # what np.load takes for an .npz
_KINDS = (
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file"),
    (_NPY_MAGIC, "an .npy array"),
    (b"PK\x03\x04", "a zip archive (.npz)"),
    (b"PK\x05\x06", "a zip archive (.npz)"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x80", "a Python pickle"),
)


def _head(path: Path) -> bytes:
    """The first bytes of ``path``, which say what it holds."""
    try:
        with open(path, "rb") as handle:
            return handle.read(8)
    except OSError as error:
        raise SourceError(path, f"cannot read file ({error.strerror or error})") from None


def _holds(head: bytes) -> str:
    """What a file starting with ``head`` holds, in words, for an error message."""
    if not head:
        return "an empty file"
    return next((kind for magic, kind in _KINDS if head.startswith(magic)), "something else")


def check_content(path: Path, fmt: str) -> None:
    """Refuse ``path`` unless its first bytes are those of ``fmt`` (``"npz"``, ``"npy"``): a
    format forced on the wrong file (``--input-format``), or a file named for another format,
    would otherwise be read as whatever ``np.load`` makes of it (an .npy array where an archive
    is expected, a pickle where an array is), a traceback at best."""
    head = _head(path)
    ok = head.startswith(_ZIP_MAGICS) if fmt == "npz" else head.startswith(_NPY_MAGIC)
    if not ok:
        raise SourceError(path, f"not a valid .{fmt} file (it is {_holds(head)})")


class ArraySource(Source):
    """Shared logic for sources whose images are one (N, H, W[, C]) uint8 array."""

    image_key = "images"

    def _set_images(self, key: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        check_images(self.path, key, shape, dtype)
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


def _npz_member_in_place(path: Path, key: str) -> np.ndarray | None:
    """``key`` of an uncompressed .npz, read in place on demand (a :class:`FileArray`; None if
    it is compressed or unusual): ``np.savez`` stores members verbatim, so a worker reads the
    rows it needs instead of loading the whole array (150 MB for CIFAR-10) into every process
    before its first shard."""
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
        return FileArray(path, offset, tuple(shape), dtype)  # type: ignore[return-value]
    except (KeyError, ValueError, OSError, zipfile.BadZipFile):
        return None


class NpzSource(ArraySource):
    """``.npz`` archives; the images array is loaded into memory once per process."""

    format = "npz"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        check_content(path, "npz")
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
                self.labels = check_labels(path, npz[label_key], self._shape[0], label_key)
                names = (
                    as_names(npz["class_names"], path, "'class_names'")
                    if "class_names" in keys
                    else []
                )
        except IpmixError:
            raise
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            raise SourceError(path, f"not a readable .npz file ({one_line(error)})") from None
        self.class_names = class_names_for(path, self.labels, names)

    def _array(self) -> np.ndarray:
        arr = self.__dict__.get("_cache_images")
        if arr is None:
            with LAZY_LOAD:
                arr = self.__dict__.get("_cache_images")
                if arr is None:
                    arr = _npz_member_in_place(self.path, self.image_key)
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
            if not _sibling_is_file(lp):
                raise SourceError(
                    path, f"no labels: expected sibling {lp.name} or an explicit labels path"
                )
        else:
            lp = Path(labels_path).absolute()
            if not path_exists(lp):
                raise SourceError(lp, "labels file does not exist")
            if not lp.is_file():
                raise SourceError(lp, f"labels must be an .npy file, this is {path_kind(lp)}")
        self.labels_path = lp
        self.labels = check_labels(lp, _load_npy(lp, mmap=False), self._shape[0])
        names_path = path.with_name(path.stem + "_class_names.txt")
        names: list[str] = []
        if _sibling_is_file(names_path):
            names = _read_names(names_path)
        self.class_names = class_names_for(path, self.labels, names)

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


def _sibling_is_file(path: Path) -> bool:
    """Whether the optional sibling file ``path`` (labels, class names) is there. A name the
    file system cannot hold (a long input name plus a suffix) cannot be there either, so that
    is a plain no; any other failure of the look-up names the file."""
    try:
        return path.is_file()
    except OSError as error:
        if error.errno == errno.ENAMETOOLONG:
            return False
        raise SourceError(path, lookup_problem(error)) from None


def _read_names(path: Path) -> list[str]:
    """Class names of an .npy input, one per line of ``path``: UTF-8 text, as the docs say;
    bytes that are not would otherwise be a traceback (or, decoded leniently, wrong names)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SourceError(path, f"cannot read file ({error.strerror or error})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise SourceError(
            path,
            f"not UTF-8 text (byte {data[error.start]:#04x} on line {line}); "
            "class names must be UTF-8, one per line",
        ) from None
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def _load_npy(path: Path, *, mmap: bool) -> np.ndarray:
    """The array of an .npy file; ``mmap``: read on demand (:class:`FileArray`: a C-order
    array; np.load's own memory map otherwise), not loaded whole."""
    check_content(path, "npy")  # np.load would open an .npz (or a pickle) as well
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise SourceError(path, f"not a readable .npy file ({one_line(error)})") from None
    if mmap and isinstance(array, np.memmap) and array.ndim and array.flags.c_contiguous:
        on_demand = FileArray(path, array.offset, array.shape, array.dtype)
        del array  # unmapped: a truncated file must not be mapped here
        return on_demand  # type: ignore[return-value]
    return array


def _h5_strings(value: Any, path: Path) -> list[str]:
    """Class names from an HDF5 ``class_names`` attribute: a JSON list, one string, or an
    array of strings; text that is not UTF-8 is an error naming ``path``."""
    what = "'class_names' attribute"
    if isinstance(value, (str, bytes)):
        import json

        text = as_names([value], path, what)[0]
        try:
            parsed = json.loads(text)
        except ValueError:
            return [text]
        return as_names(parsed, path, what) if isinstance(parsed, list) else [text]
    return as_names(np.asarray(value).ravel().tolist(), path, what)


def without_frames(error: IpmixError) -> IpmixError:
    """``error``, cut loose from the frames it was raised through and from the error it
    replaced, to be raised again by the caller. Those frames hold h5py objects, and one still
    alive when the interpreter exits (the CLI exits holding its error) can crash HDF5's own
    clean-up: a virtual dataset's creation property list segfaults it, after the message."""
    error.__traceback__ = None
    error.__context__ = None
    error.__cause__ = None
    return error


def check_hdf5(path: Path) -> None:
    """Refuse ``path`` unless it is an HDF5 file (h5py's own test, which finds a superblock
    after a user block too): "file signature not found" says less than what the file is."""
    import h5py

    try:
        ok = h5py.is_hdf5(path)
    except OSError as error:
        raise SourceError(path, f"cannot read file ({error.strerror or error})") from None
    if not ok:
        raise SourceError(path, f"not a valid HDF5 file (it is {_holds(_head(path))})")


def _vds_candidates(vfile: Path, name: str) -> list[Path]:
    """Where HDF5 looks for the source file ``name`` of a virtual dataset in ``vfile``, in its
    order (H5Pset_virtual): an absolute name as it is, then (stripped of its folders if it was
    absolute) under each ``HDF5_VDS_PREFIX`` entry (``${ORIGIN}``: the folder of ``vfile``),
    under the folder of ``vfile``, and as given, from the working folder."""
    src = Path(name)
    found = [src] if src.is_absolute() else []
    rel = Path(src.name) if src.is_absolute() else src
    for prefix in os.environ.get("HDF5_VDS_PREFIX", "").split(os.pathsep):
        if prefix:
            found.append(Path(prefix.replace("${ORIGIN}", str(vfile.parent))) / rel)
    return [*found, vfile.parent / rel, rel]


def check_virtual_sources(path: Path, dset: Any, key: str) -> None:
    """Refuse a virtual dataset ``key`` of HDF5 file ``path`` whose data is not all there:
    HDF5 reads the part of a missing source file, of a source file without the named dataset,
    or past the end of a shorter source dataset, as the fill value, so those images would
    silently be black (or labels 0). Each source file is looked for as HDF5 looks for it and
    opened once. Source names with a printf-style pattern (``%b``: an unlimited dataset whose
    files HDF5 finds when it opens them) are not checked; a plain dataset has nothing to check.
    """
    if not dset.is_virtual:
        return
    import h5py

    # Plain values first: an h5py selection object still referenced from an error's traceback
    # when the interpreter shuts HDF5 down crashes it (a segfault after the message).
    maps = [(v.file_name, v.dset_name, _source_need(v)) for v in dset.virtual_sources()]
    where = f"'{key}' is a virtual dataset whose source"
    files: dict[str, Any] = {}
    try:
        for name, inner, need in maps:
            if "%" in name:
                continue
            if name not in files:
                files[name] = _open_vds_source(path, name, where)
            src_file = files[name]
            source = src_file.get(inner) if src_file is not None else dset.file.get(inner)
            shown = name if name != "." else str(path)
            if not isinstance(source, h5py.Dataset):
                raise SourceError(
                    path, f"{where} file {shown} holds no dataset '{inner}' (it would read as 0)"
                )
            short = _short_source(tuple(int(n) for n in source.shape), need)
            if short is not None:
                raise SourceError(
                    path, f"{where} {shown}:{inner} has {short} (HDF5 would read the rest as 0)"
                )
    finally:
        for handle in files.values():
            if handle is not None:
                handle.close()


def _open_vds_source(path: Path, name: str, where: str) -> Any:
    """The source file ``name`` of a virtual dataset in ``path``, opened (``None``: ``path``
    itself); a missing or unreadable one is a :class:`SourceError`."""
    import h5py

    if name == ".":
        return None
    tried = []
    for candidate in _vds_candidates(path, name):
        try:
            if not candidate.is_file():
                continue
            return h5py.File(candidate, "r")
        except OSError as error:  # HDF5 too moves on to its next place
            tried.append(f"{candidate}: {one_line(error)}")
    if tried:
        raise SourceError(path, f"{where} file {name} cannot be opened ({tried[0]})")
    raise SourceError(path, f"{where} file {name} is missing (HDF5 would read its part as zeros)")


def _source_need(vmap: Any) -> tuple[int, ...] | int | None:
    """What one mapping of a virtual dataset needs of its source dataset: the last index its
    selection reaches, per axis (a tuple), or, where it maps the whole source (``H5S_ALL``,
    which records no extent), the number of elements it maps (an int); ``None`` for an
    unlimited selection (nothing fixed to check)."""
    from h5py import h5s

    try:
        if vmap.src_space.get_select_type() == h5s.SEL_ALL:
            return int(vmap.vspace.get_select_npoints())
        _, end = vmap.src_space.get_select_bounds()
    except (ValueError, RuntimeError, TypeError):
        return None
    return tuple(int(e) for e in end)


def _short_source(shape: tuple[int, ...], need: tuple[int, ...] | int | None) -> str | None:
    """How a source dataset of ``shape`` fails what a mapping needs (:func:`_source_need`)."""
    if need is None:
        return None
    if isinstance(need, int):
        have = int(np.prod(shape, dtype=np.int64))
        return None if have == need else f"{have} values where it maps {need}"
    if len(need) == len(shape) and all(e < n for e, n in zip(need, shape, strict=True)):
        return None
    return f"shape {shape}, smaller than the {tuple(e + 1 for e in need)} it maps"


class Hdf5Source(ArraySource):
    """HDF5 files with ``images``/``labels`` (our own output entry files included)."""

    format = "hdf5"
    coded = False  # an ipmix output whose images are JPEG / PNG in its shards

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        check_hdf5(path)
        try:
            names = self._read_meta(path)
        except IpmixError as error:
            raise without_frames(error) from None
        self.class_names = class_names_for(path, self.labels, names)

    def _read_meta(self, path: Path) -> list[str]:
        """Check the file and set images, labels; the class names it records."""
        import h5py

        from ipmix_cli import shards

        try:
            with h5py.File(path, "r") as f:
                ours = f.attrs.get("kind") == shards.ENTRY_KIND
                # an ipmix output: no silently zero-filled missing shards, and its class names
                manifest = shards.check_output(path) if ours else None
                recorded = list(manifest.class_names) if manifest is not None else None
                if manifest is not None and manifest.codec != "raw":
                    return self._coded_meta(path, f, manifest)
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
                if not isinstance(lab, h5py.Dataset):
                    raise SourceError(path, f"'{label_key}' is a group, not a dataset")
                if not ours:  # an ipmix output's shards were checked above, one stat each
                    check_virtual_sources(path, dset, image_key)
                    check_virtual_sources(path, lab, label_key)
                self.label_key = label_key
                self.labels = check_labels(path, lab[()], self._shape[0], label_key)
                raw = f.attrs.get("class_names", lab.attrs.get("class_names"))
                names = _h5_strings(raw, path) if raw is not None else []
                if recorded is not None:
                    names = recorded
        except IpmixError:
            raise
        except (OSError, ValueError, KeyError) as error:
            raise SourceError(path, f"not a readable HDF5 file ({one_line(error)})") from None
        return names

    def read(self, i: int) -> np.ndarray:
        if self.coded:
            return self.read_batch([i])[0]
        return super().read(i)

    def _coded_meta(self, path: Path, f: Any, manifest: Any) -> list[str]:
        """An ipmix output stored as JPEG or PNG (``--codec``): its entry has no image
        datasets, the rows are encoded in the shards, and :class:`ShardReader` decodes them
        (the first view of a JSD output, as ``images`` is for a raw one). An ``export`` to
        JPEG then feeds ``augment`` without a folder of files in between."""
        self.coded = True
        self._set_images("images", (manifest.count, *manifest.image_shape), np.dtype(np.uint8))
        self.label_key = "labels"
        self.labels = check_labels(path, f["labels"][()], self._shape[0], "labels")
        return list(manifest.class_names)

    def _coded_reader(self) -> Any:
        """This process's :class:`ShardReader` over a coded output (made after a fork)."""
        reader = self.__dict__.get("_cache_reader")
        if reader is None or self.__dict__.get("_cache_reader_pid") != os.getpid():
            from ipmix_cli.readers import ShardReader

            with LAZY_LOAD:
                reader = ShardReader(self.path, views=("images",), decode_threads=1)
                self._cache_reader = reader
                self._cache_reader_pid = os.getpid()
        return reader

    def _array(self) -> Any:
        handle = self.__dict__.get("_cache_h5")
        if handle is not None and self.__dict__.get("_cache_pid") != os.getpid():
            ABANDONED_HANDLES.append(handle)  # inherited through fork: do not touch
            handle = None
        if handle is None:
            import h5py

            with LAZY_LOAD:
                handle = self.__dict__.get("_cache_h5")
                if handle is None or self.__dict__.get("_cache_pid") != os.getpid():
                    handle = h5py.File(self.path, "r")
                    self._cache_h5 = handle
                    self._cache_pid = os.getpid()
        return handle[self.image_key]

    def _take(self, idx: np.ndarray) -> np.ndarray:
        """h5py wants increasing unique indices: read those (a slice if contiguous), reorder."""
        if self.coded:
            return self._coded_reader().read(idx)["images"]
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
