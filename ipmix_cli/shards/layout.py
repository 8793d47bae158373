"""The on-disk contract of an augment output: names, dataset names, versions, the row layout.

Everything a reader in another language needs to know to find its way in an output is defined
here once (and documented in ``docs/format.md``; keep the two in step and bump
:data:`FORMAT_VERSION` on any incompatible change)::

    OUT.h5                     entry file: virtual datasets over all shards + JSON manifest
    OUT.shards/shard-00000.h5  one file per shard, written by the worker that made it, then renamed
    OUT.shards/shard-00001.h5
    ...

An output of more than :data:`SHARDS_PER_FOLDER` shards puts them in numbered subfolders of
that many (``OUT.shards/0012/shard-12345.h5``), so that no folder holds more than a few
thousand files (file systems, ``ls`` and object stores slow down past that).

Rows are laid out copy-major, ``row = copy * num_sources + source``, so that copy ``c`` of every
source is one contiguous block: a reader serving epoch ``e`` reads block ``e mod copies``
sequentially, and the job can give each shard a fixed range of rows. :func:`row_of` and
:func:`copy_and_source` are the only places that formula is written.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TypeVar

import numpy as np

FORMAT_VERSION = 2
"""Version of the output layout, recorded in the entry file; readers refuse a larger number.
Version 2 keeps the manifest and the per-shard and per-class lists in datasets under ``ipmix/``
(version 1 had them as attributes, which HDF5 caps at 64 KiB: ~4,000 shards or classes)."""

SHARD_FORMAT_VERSION = 1
"""Version of one shard file's layout (unchanged since the first release)."""

META_GROUP = "ipmix"
"""The entry file's group holding ``manifest`` (JSON text), ``shard_files``, ``shard_counts``
and ``class_names`` as datasets (format version 2)."""

ENTRY_KIND = "ipmix-entry"
SHARD_KIND = "ipmix-shard"
STANDARD_DATASETS = ("images", "labels", "source_index", "copy_index")
JSD_DATASETS = ("clean", "images2")
IMAGE_DATASETS = ("images", "clean", "images2")
INDEX_DATASETS = ("labels", "source_index", "copy_index")
FILL_INDEX = -1
"""Fill value of the index datasets in the entry file: what a plain HDF5 reader sees for a row
whose shard is missing (never a valid label or index)."""

ROW_LAYOUT = "copy-major: row = copy * num_sources + source"
"""How rows are laid out, as recorded in every manifest."""

RESERVED_ATTRS = frozenset(
    {"kind", "format_version", "shard_index", "count", "checksum", "checksum_method", "mode"}
)
"""Shard attributes the format defines; extra attributes a writer adds may not reuse them."""

LOCK_FILE = ".lock"
"""In the shard folder: the file a running job holds its lock on (empty once it is done)."""

SHARD_NAME = re.compile(r"^shard-(\d{5,})\.h5$")
SUBFOLDER_NAME = re.compile(r"^\d{4,}$")
SHARDS_PER_FOLDER = 1000

Rows = TypeVar("Rows", int, np.ndarray)


def datasets_for(mode: str) -> tuple[str, ...]:
    """The datasets an output of ``mode`` (``"standard"`` or ``"jsd"``) holds, in order."""
    return STANDARD_DATASETS + (JSD_DATASETS if mode == "jsd" else ())


def row_of(copy: Rows, source: Rows, num_sources: int) -> Rows:
    """The output row holding copy ``copy`` of input ``source`` (ints or int64 arrays)."""
    return copy * num_sources + source


def copy_and_source(rows: Rows, num_sources: int) -> tuple[Rows, Rows]:
    """Inverse of :func:`row_of`: ``(copy, source)`` of each output row."""
    if isinstance(rows, np.ndarray):
        copies, sources = np.divmod(rows, num_sources)
        return copies, sources
    return divmod(rows, num_sources)


def shard_filename(index: int, num_shards: int = 1) -> str:
    """Where shard ``index`` of an output of ``num_shards`` lives, relative to the shard
    folder: ``shard-00042.h5``, or ``0012/shard-12345.h5`` past :data:`SHARDS_PER_FOLDER`."""
    name = f"shard-{int(index):05d}.h5"
    if num_shards > SHARDS_PER_FOLDER:
        return f"{int(index) // SHARDS_PER_FOLDER:04d}/{name}"
    return name


def shard_relpath(path: str | os.PathLike[str]) -> str:
    """The name a shard file at ``path`` goes by in its output (its subfolder included)."""
    p = Path(path)
    if SUBFOLDER_NAME.match(p.parent.name):
        return f"{p.parent.name}/{p.name}"
    return p.name


def shard_files_in(folder: Path) -> list[Path]:
    """Every finished shard file in a shard folder and its numbered subfolders, sorted."""
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        if SHARD_NAME.match(entry.name):
            found.append(entry)
        elif SUBFOLDER_NAME.match(entry.name) and entry.is_dir():
            found.extend(p for p in entry.iterdir() if SHARD_NAME.match(p.name))
    return sorted(found, key=lambda p: p.name)


def shard_subfolders(folder: Path) -> list[Path]:
    """The numbered subfolders of a shard folder (none for outputs of few shards)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if SUBFOLDER_NAME.match(p.name) and p.is_dir())


def shard_dir(entry_path: str | os.PathLike[str]) -> Path:
    """The shard folder of an entry file: ``OUT.h5`` -> ``OUT.shards`` (same parent)."""
    entry = Path(entry_path)
    return entry.with_name(entry.stem + ".shards")


def shard_path(entry_path: str | os.PathLike[str], index: int, num_shards: int = 1) -> Path:
    """Where shard ``index`` of ``entry_path`` lives (an output of ``num_shards`` shards)."""
    return shard_dir(entry_path) / shard_filename(index, num_shards)
