"""The manifest: what an entry file says about its output, as one typed, versioned object.

Written in one place (``write_entry`` stores :meth:`Manifest.to_json`) and read in one place
(:func:`load_manifest`; :func:`read_manifest`, which every reader and ``inspect`` use, refuses
what it finds wrong, ``verify`` reports all of it), so the schema lives here and nowhere else,
and so do the checks that its numbers fit together (:func:`manifest_faults`). Two kinds of
fields:

* the output's shape, filled in by ``write_entry`` from the shards it joins: ``count``,
  ``mode``, ``image_shape``, ``class_names``, ``shards_dir``, ``shards``, and how the images
  are stored, ``codec`` (``"raw"``, ``"jpeg"``, ``"png"``; ``"raw"`` when an older entry does
  not say) and ``quality`` (JPEG only);
* the job's account of how it was made (all optional, for entry files written by other tools
  through ``write_entry``): ``environment`` (the versions bytes depend on), ``config``,
  ``seed``, ``copies``, ``num_sources``,
  ``rows_per_shard``, ``compression``, ``source``, ``mixing_set``, ``skipped``,
  ``class_labels`` (human labels from ``--classes``, one per class name), ``job``.

Keys this version does not know are kept in ``extra`` and written back unchanged, so a file
from a newer minor version survives a round trip.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import h5py

from ipmix_cli.errors import ShardError, one_line
from ipmix_cli.fs.regular import NotRegularFileError, regular_or_absent
from ipmix_cli.shards.attrs import decode_attr, json_default
from ipmix_cli.shards.layout import ENTRY_KIND, FORMAT_VERSION, META_GROUP, ROW_LAYOUT

TOOL = "ipmix"
MODES = ("standard", "jsd")
CODECS = ("raw", "jpeg", "png")  # as in shards/codec.py; kept here so the schema is self-contained


@dataclass(frozen=True)
class ShardRecord:
    """One shard as the entry file records it: ``file`` relative to the entry's folder, and
    its size in bytes (format 2; ``None`` in older entries), which lets a reader check every
    shard with one ``stat`` instead of opening thousands of HDF5 files."""

    index: int
    file: str
    start: int
    count: int
    checksum: str
    bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "index": self.index,
            "file": self.file,
            "start": self.start,
            "count": self.count,
            "checksum": self.checksum,
        }
        if self.bytes is not None:
            out["bytes"] = self.bytes
        return out

    @classmethod
    def from_dict(cls, d: Any, where: str) -> ShardRecord:
        if not isinstance(d, Mapping):
            raise ValueError(f"{where} is not a mapping")
        size = d.get("bytes")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int)):
            raise ValueError(f"{where}: 'bytes' must be an integer, got {size!r}")
        return cls(
            index=_int(d, "index", where),
            file=_str(d, "file", where),
            start=_int(d, "start", where),
            count=_int(d, "count", where),
            checksum=_str(d, "checksum", where),
            bytes=size,
        )


# Fields the job records; None means "not recorded" and is left out of the JSON.
_JOB_FIELDS = (
    "environment",
    "config",
    "seed",
    "rows_per_shard",
    "compression",
    "source",
    "mixing_set",
    "skipped",
    "class_labels",
    "job",
)


@dataclass(frozen=True)
class Manifest:
    """Everything an entry file records about its output (see the module docstring)."""

    count: int
    mode: str
    image_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    shards_dir: str
    shards: tuple[ShardRecord, ...]
    copies: int = 1
    num_sources: int = 0
    layout: str = ROW_LAYOUT
    codec: str = "raw"
    quality: int | None = None
    environment: dict[str, str] | None = None
    config: dict[str, Any] | None = None
    seed: int | None = None
    rows_per_shard: int | None = None
    compression: str | None = None
    source: dict[str, Any] | None = None
    mixing_set: dict[str, Any] | None = None
    skipped: list[list[str]] | None = None
    class_labels: list[str] | None = None
    job: str | None = None
    format_version: int = FORMAT_VERSION
    kind: str = ENTRY_KIND
    tool: str = TOOL
    tool_version: str = "unknown"
    extra: dict[str, Any] = field(default_factory=dict)

    # -- derived -------------------------------------------------------------------------------
    @property
    def num_shards(self) -> int:
        return len(self.shards)

    @property
    def shard_files(self) -> list[str]:
        """Each shard's path relative to the entry file's folder, in index order."""
        return [s.file for s in self.shards]

    @property
    def shard_counts(self) -> list[int]:
        return [s.count for s in self.shards]

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form stored in the entry file (unrecorded job fields left out)."""
        out: dict[str, Any] = dict(self.extra)
        out.update(
            {
                "format_version": self.format_version,
                "kind": self.kind,
                "tool": self.tool,
                "tool_version": self.tool_version,
                "count": self.count,
                "mode": self.mode,
                "image_shape": list(self.image_shape),
                "class_names": list(self.class_names),
                "shards_dir": self.shards_dir,
                "shards": [s.to_dict() for s in self.shards],
                "copies": self.copies,
                "num_sources": self.num_sources,
                "layout": self.layout,
                "codec": self.codec,
            }
        )
        if self.quality is not None:
            out["quality"] = self.quality
        for name in _JOB_FIELDS:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, default=json_default)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "manifest") -> Manifest:
        """Parse and check a stored manifest; ``ValueError`` says which field is wrong."""
        if not isinstance(d, Mapping):
            raise ValueError(f"{where} is not a JSON object")
        version = _int(d, "format_version", where)
        if version > FORMAT_VERSION:
            raise ValueError(
                f"written in shard format {version}; this ipmix reads up to {FORMAT_VERSION}"
            )
        mode = _str(d, "mode", where, default="standard")
        if mode not in MODES:
            raise ValueError(f"{where}: unknown mode {mode!r}")
        shape = d.get("image_shape")
        if not (
            isinstance(shape, Sequence)
            and len(shape) == 3
            and all(isinstance(v, int) and v > 0 for v in shape)
        ):
            raise ValueError(f"{where}: 'image_shape' must be three positive integers")
        raw_shards = d.get("shards")
        if not isinstance(raw_shards, list):
            raise ValueError(f"{where}: 'shards' must be a list")
        shards = tuple(
            ShardRecord.from_dict(s, f"{where}: shard {i}") for i, s in enumerate(raw_shards)
        )
        names = d.get("class_names", [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{where}: 'class_names' must be a list of strings")
        labels = d.get("class_labels")
        if labels is not None and (
            not isinstance(labels, list)
            or len(labels) != len(names)
            or not all(isinstance(n, str) for n in labels)
        ):
            raise ValueError(f"{where}: 'class_labels' must be one string per class name")
        count = _int(d, "count", where)
        copies = _int(d, "copies", where, default=1)
        if copies < 1:
            raise ValueError(f"{where}: 'copies' must be at least 1")
        codec = _str(d, "codec", where, default="raw")
        if codec not in CODECS:
            raise ValueError(f"{where}: unknown image codec {codec!r}")
        quality = d.get("quality")
        if quality is not None and (isinstance(quality, bool) or not isinstance(quality, int)):
            raise ValueError(f"{where}: 'quality' must be an integer, got {quality!r}")
        known = {f.name for f in fields(cls)} - {"extra"}
        values: dict[str, Any] = {
            "count": count,
            "mode": mode,
            "image_shape": (int(shape[0]), int(shape[1]), int(shape[2])),
            "class_names": tuple(names),
            "shards_dir": _str(d, "shards_dir", where, default=""),
            "shards": shards,
            "copies": copies,
            "num_sources": _int(d, "num_sources", where, default=count // copies),
            "layout": _str(d, "layout", where, default=ROW_LAYOUT),
            "codec": codec,
            "quality": quality,
            "format_version": version,
            "kind": _str(d, "kind", where, default=ENTRY_KIND),
            "tool": _str(d, "tool", where, default=TOOL),
            "tool_version": _str(d, "tool_version", where, default="unknown"),
        }
        for name in _JOB_FIELDS:
            values[name] = d.get(name)
        values["extra"] = {k: v for k, v in d.items() if k not in known}
        return cls(**values)

    @classmethod
    def from_json(cls, text: str, where: str = "manifest") -> Manifest:
        try:
            data = json.loads(text)
        except ValueError as error:
            raise ValueError(f"{where} is not valid JSON ({error})") from None
        return cls.from_dict(data, where)


def _int(d: Mapping[str, Any], key: str, where: str, default: int | None = None) -> int:
    value = d.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: {key!r} must be an integer, got {value!r}")
    return value


def _str(d: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = d.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"{where}: {key!r} must be a string, got {value!r}")
    return value


def manifest_faults(manifest: Manifest) -> list[str]:
    """Every way ``manifest`` contradicts itself, one line each (empty when it holds together).

    :meth:`Manifest.from_dict` checks each field on its own; this checks that they fit: the
    shards listed in index order, each holding at least one row and starting where the one
    before ends, their counts adding up to ``count``, and ``copies * num_sources == count``.
    Readers find a row's shard from these numbers, so a manifest failing any of them would
    read rows from the wrong shard or past a shard's end; :func:`read_manifest` therefore
    refuses it (every reader, ``preview`` and ``inspect`` go through it) and ``verify`` lists
    all of them, from this one function, so the two cannot drift apart.
    """
    faults: list[str] = []
    shards = manifest.shards
    if not shards:
        faults.append("manifest records no shards")
    expected_start = 0
    for i, s in enumerate(shards):
        if s.index != i:
            faults.append(
                f"manifest: shard {i} records index {s.index}; shards must be listed in "
                f"index order 0..{len(shards) - 1}"
            )
        if s.count < 1:
            faults.append(f"manifest: shard {i} records {s.count} rows; a shard holds at least 1")
        if s.start != expected_start:
            where = f"where shard {i - 1} ends" if i else "the first row"
            faults.append(
                f"manifest: shard {i} starts at row {s.start}, not {expected_start} ({where})"
            )
        expected_start = s.start + s.count
    total = sum(s.count for s in shards)
    if total != manifest.count:
        faults.append(
            f"manifest: shard counts do not add up to {manifest.count} (they add up to {total})"
        )
    if manifest.num_sources < 1 or manifest.copies * manifest.num_sources != manifest.count:
        faults.append(
            f"manifest says {manifest.copies} copies of {manifest.num_sources} sources, but the "
            f"output holds {manifest.count} rows"
        )
    return faults


def load_manifest(entry: Path) -> tuple[Manifest, list[str]]:
    """The manifest of the entry file ``entry`` and everything in it that readers refuse (see
    :func:`manifest_faults`; also a root ``format_version`` attribute that is missing or not
    the manifest's), for ``verify``, which reports them all instead of stopping at the first.

    Raises :class:`ShardError` when ``entry`` is no readable ipmix entry file at all, or one of
    a newer format than this ipmix reads (by its manifest or by its root ``format_version``
    attribute, which is what a plain HDF5 reader goes by: docs/format.md says a reader must
    refuse a larger version). Format version 2 keeps the manifest in the ``ipmix/manifest``
    dataset, version 1 in an attribute.
    """
    try:
        if not regular_or_absent(entry):
            raise ShardError(entry, "output entry file does not exist")
    except NotRegularFileError as error:  # a pipe would hang HDF5's open
        raise ShardError(entry, f"{error.kind}, not an output entry file") from None
    try:
        with h5py.File(entry, "r") as f:
            kind = decode_attr(f.attrs.get("kind"))
            root_version = decode_attr(f.attrs.get("format_version"))
            stored = f.get(f"{META_GROUP}/manifest")
            if isinstance(stored, h5py.Dataset):
                text = decode_attr(stored[()])
            else:
                text = decode_attr(f.attrs.get("manifest"))
    except (OSError, ValueError, KeyError) as error:
        raise ShardError(entry, f"unreadable entry file: {one_line(error, 160)}") from None
    if kind != ENTRY_KIND or not isinstance(text, str):
        raise ShardError(entry, "not an ipmix output entry file (no kind='ipmix-entry')")
    is_int = isinstance(root_version, int) and not isinstance(root_version, bool)
    if is_int and root_version > FORMAT_VERSION:
        raise ShardError(
            entry,
            f"format_version attribute {root_version}: written in a newer format than this "
            f"ipmix reads (up to {FORMAT_VERSION})",
        )
    try:
        manifest = Manifest.from_json(text, "manifest")
    except ValueError as error:
        raise ShardError(entry, one_line(error)) from None
    faults = []
    if root_version is None:
        faults.append("no format_version attribute on the root group")
    elif not is_int:
        faults.append(f"format_version attribute is {root_version!r}, not an integer")
    elif root_version != manifest.format_version:
        faults.append(
            f"format_version attribute {root_version} disagrees with the manifest's "
            f"{manifest.format_version}"
        )
    return manifest, faults + manifest_faults(manifest)


def read_manifest(entry: Path) -> Manifest:
    """The manifest of the entry file ``entry``, after checking it is one we can read and that
    it holds together (:func:`load_manifest`): the first fault found is raised as a
    :class:`ShardError` naming ``entry``, so a reader never maps rows to the wrong shard."""
    manifest, faults = load_manifest(entry)
    if faults:
        more = (
            f" (and {len(faults) - 1} more; `ipmix verify` lists them)" if len(faults) > 1 else ""
        )
        raise ShardError(entry, faults[0] + more)
    return manifest
