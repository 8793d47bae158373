"""Which format an input is, and :func:`open_source`, the one way in for every format."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ipmix_cli.errors import SourceError
from ipmix_cli.fs.regular import path_kind
from ipmix_cli.sources.arrays import Hdf5Source, NpySource, NpzSource
from ipmix_cli.sources.base import Progress, Source, path_exists
from ipmix_cli.sources.cifar import CifarSource, cifar_variant
from ipmix_cli.sources.class_map import ClassMap
from ipmix_cli.sources.folder import FolderSource

FORMATS = ("folder", "cifar", "npz", "npy", "hdf5")
ON_ERROR = ("fail", "skip")
HDF5_SUFFIXES = {".h5", ".hdf5", ".hdf", ".he5"}
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
NPY_MAGIC = b"\x93NUMPY"


def detect_format(path: str | os.PathLike[str]) -> str:
    """Guess the input format of ``path`` (see the module doc); SourceError if unknown."""
    p = Path(path)
    if not path_exists(p):
        raise SourceError(p, "no such file or folder")
    if p.is_dir():
        return "cifar" if cifar_variant(p) else "folder"
    if not p.is_file():  # sniffing a named pipe's first bytes would wait for a writer
        raise SourceError(p, f"{path_kind(p)}, not a data set file or folder")
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
    fingerprint: str = "stat",
    n_jobs: int = 1,
    progress: Progress | None = None,
    exclude: Mapping[str, str] | None = None,
    class_map: ClassMap | None = None,
) -> Source:
    """Open a labelled image data set, auto-detecting its format unless ``input_format`` is given.

    ``on_error``: ``"fail"`` stops at the first unreadable image with a one-line
    :class:`SourceError` naming it; ``"skip"`` leaves such files out (they are listed in
    ``source.skipped`` and do not count in ``len`` / ``labels``). It applies to per-file problems
    in image folders; a broken array file is always an error.

    ``split`` selects the CIFAR split; ``labels_path`` gives the labels of a ``.npy`` input
    (and is refused for any other, which holds its labels: it would be ignored).
    Folders only: every file's header is checked now (``n_jobs`` worker processes, reporting to
    ``progress``); ``fingerprint`` is ``"stat"`` (path, size, mtime, format and size per file)
    or ``"full"`` (content hashes); ``exclude`` maps relative paths to the reason they are left
    out (files a full check found broken); ``class_map`` (``--classes``) picks and orders the
    class folders.
    """
    p = Path(path).absolute()
    if on_error not in ON_ERROR:
        raise SourceError(p, f"unknown on_error {on_error!r} (choose 'fail' or 'skip')")
    if input_format is not None and input_format not in FORMATS:
        raise SourceError(
            p, f"unknown input format {input_format!r} (choose from {', '.join(FORMATS)})"
        )
    if not path_exists(p):
        raise SourceError(p, "no such file or folder")
    fmt = input_format or detect_format(p)
    if labels_path is not None and fmt != "npy":
        # before a folder's scan: an .npz, HDF5 or CIFAR input holds its labels, and a
        # folder's are its class folders, so a labels file given for them would be ignored
        raise SourceError(
            Path(labels_path).absolute(),
            f"--labels gives the labels of an .npy input; {p} is {fmt} data, "
            "which holds its own labels",
        )
    if fmt in ("folder", "cifar") and not p.is_dir():
        raise SourceError(p, f"input format '{fmt}' needs a folder, this is {path_kind(p)}")
    if fmt in ("npz", "npy", "hdf5") and not p.is_file():
        raise SourceError(p, f"input format '{fmt}' needs a file, this is {path_kind(p)}")
    if fmt == "folder":
        return FolderSource(
            p,
            on_error=on_error,
            fingerprint=fingerprint,
            n_jobs=n_jobs,
            progress=progress,
            exclude=exclude,
            class_map=class_map,
        )
    if class_map is not None:
        raise SourceError(
            class_map.path,
            f"--classes picks class folders of an image-folder input; {p} is {fmt} data",
        )
    if fmt == "cifar":
        return CifarSource(p, split=split)
    if fmt == "npz":
        return NpzSource(p)
    if fmt == "npy":
        return NpySource(p, labels_path=labels_path)
    return Hdf5Source(p)
