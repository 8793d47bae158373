"""The entry file ``OUT.h5``: virtual datasets joining every shard, plus the manifest.

The entry file joins shards with HDF5 *virtual datasets* using paths relative to the entry
file, so plain h5py (or any HDF5 >= 1.10 reader) sees ``images`` as one (N, H, W, 3) array and
the output folder can be moved as a whole. HDF5 fills a virtual dataset's missing source with
its fill value: ``labels``, ``source_index`` and ``copy_index`` therefore use fill value -1
(never a valid value), and our own readers check every shard before handing out data.

Outputs whose images are coded (JPEG or PNG rows, :mod:`ipmix_cli.shards.codec`) get no image
virtual datasets: virtual datasets over variable-length data are not something to rely on
across HDF5 builds (h5py 3.16 / HDF5 2.0 read a small one back, but a format read from many
languages cannot count on that), and a reader that decodes rows opens the shard files anyway.
The index datasets (``labels``, ``source_index``, ``copy_index``) are still joined, and the
entry records ``codec`` (and JPEG's ``quality``) as root attributes and in the manifest.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ipmix_cli.errors import ShardError
from ipmix_cli.fs.atomic import atomic_path, write_error, write_new_file
from ipmix_cli.shards.layout import (
    ENTRY_KIND,
    FILL_INDEX,
    FORMAT_VERSION,
    IMAGE_DATASETS,
    META_GROUP,
    datasets_for,
    shard_dir,
)
from ipmix_cli.shards.manifest import Manifest, manifest_faults
from ipmix_cli.shards.memfile import h5_in_memory
from ipmix_cli.shards.shard_info import ShardInfo, read_shard_info


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
    about: Mapping[str, Any],
    *,
    class_names: Sequence[str] | None = None,
    check_shards: bool = True,
    sizes: Sequence[int] | None = None,
) -> Manifest:
    """Write the entry file ``OUT.h5`` joining the shards in ``OUT.shards/``; return its
    :class:`~ipmix_cli.shards.manifest.Manifest`.

    ``shard_infos`` (from ``write_shard`` / ``read_shard_info``) must number the shards
    0..k-1; each shard must exist and carry the recorded count and checksum. ``about`` is the
    job's account of the output (``config``, ``seed``, ``copies``, ``num_sources``, ``source``,
    ``skipped``... see the manifest module); this function adds what it learns from the shards
    (count, mode, image shape, class names, the shard list, the codec and JPEG quality: a
    ``codec`` or ``quality`` in ``about`` that the shards contradict is an error, and a
    ``quality`` is only kept for JPEG outputs); ``copies`` and ``num_sources`` in ``about`` must
    multiply to the rows joined, or every reader would refuse the entry
    (:func:`~ipmix_cli.shards.manifest.manifest_faults`), so it is not written. The entry is
    written atomically.
    ``check_shards=False`` skips re-reading each shard's attributes, for a caller that has just
    written (or deep-checked) them all; each shard's size is still taken from the disk,
    unless ``sizes`` gives them (in index order: shards that live in a bucket, not here).
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
    codecs = {(s.codec, s.quality) for s in infos}
    if len(codecs) != 1:
        raise ShardError(entry, f"shards disagree on image codec {sorted(codecs, key=str)}")
    codec, quality = codecs.pop()
    said = about.get("codec")
    if said is not None and said != codec:
        raise ShardError(entry, f"the job says codec {said!r} but the shards hold {codec!r}")
    if codec == "jpeg" and about.get("quality") not in (None, quality):
        raise ShardError(
            entry, f"the job says quality {about.get('quality')} but the shards hold {quality}"
        )
    folder = shard_dir(entry)
    if sizes is not None:
        if len(sizes) != len(infos):
            raise ShardError(entry, f"{len(sizes)} sizes given for {len(infos)} shards")
        sizes, infos_to_check = [int(n) for n in sizes], []
    else:
        sizes, infos_to_check = [], infos
    for s in infos_to_check:
        if check_shards:
            on_disk = read_shard_info(folder / s.file)  # exists, readable, an ipmix shard
            if (on_disk.count, on_disk.checksum) != (s.count, s.checksum):
                raise ShardError(
                    folder / s.file,
                    f"holds {on_disk.count} images / {on_disk.checksum}, "
                    f"expected {s.count} / {s.checksum}",
                )
        try:
            sizes.append((folder / s.file).stat().st_size)
        except OSError:
            raise ShardError(folder / s.file, "shard is missing") from None
    names = list(class_names if class_names is not None else about.get("class_names") or [])
    total = sum(s.count for s in infos)
    starts = np.cumsum([0] + [s.count for s in infos])
    rel_files = [f"{folder.name}/{s.file}" for s in infos]
    fields = dict(about)
    fields.update(
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
            "codec": codec,
            "shards": [
                {
                    "index": s.index,
                    "file": rel,
                    "start": int(start),
                    "count": s.count,
                    "checksum": s.checksum,
                    "bytes": size,
                }
                for s, rel, start, size in zip(infos, rel_files, starts, sizes, strict=False)
            ],
        }
    )
    fields.pop("quality", None)  # a quality means JPEG's; raw and png outputs record none
    if codec == "jpeg":
        fields["quality"] = quality
    try:
        manifest = Manifest.from_dict(fields, "the manifest to write")
    except ValueError as error:
        raise ShardError(entry, str(error)) from None
    faults = manifest_faults(manifest)  # the job's copies x sources against the rows joined:
    if faults:  # every reader would refuse the entry, so it is not written
        raise ShardError(entry, faults[0])
    text = manifest.to_json()
    joined = [n for n in datasets_for(mode) if codec == "raw" or n not in IMAGE_DATASETS]
    size_hint = len(text) + len(infos) * 512 * len(joined) + sum(map(len, names))
    with h5_in_memory(size_hint) as (f, image):
        for name in joined:
            is_image = name in IMAGE_DATASETS
            shape = (total, h, w, 3) if is_image else (total,)
            dtype = np.uint8 if is_image else np.int64
            layout = _UntimedLayout(shape=shape, dtype=dtype)
            for s, rel, start in zip(infos, rel_files, starts, strict=False):
                src_shape = (s.count, h, w, 3) if is_image else (s.count,)
                layout[int(start) : int(start) + s.count] = h5py.VirtualSource(
                    vds_file_name(rel), name, shape=src_shape
                )
            f.create_virtual_dataset(name, layout, fillvalue=0 if is_image else FILL_INDEX)
        f.attrs["kind"] = ENTRY_KIND
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["count"] = int(total)
        f.attrs["mode"] = mode
        f.attrs["num_shards"] = len(infos)
        f.attrs["shards_dir"] = folder.name
        if codec != "raw":  # (a raw entry's datasets and attributes are as before codecs)
            f.attrs["codec"] = codec
            if quality is not None:
                f.attrs["quality"] = int(quality)
        meta = f.create_group(META_GROUP, track_order=False)
        _untimed_dataset(meta, "manifest", np.array(text, dtype=h5py.string_dtype()))
        _untimed_dataset(meta, "shard_files", np.array(rel_files, dtype=h5py.string_dtype()))
        _untimed_dataset(meta, "shard_counts", np.array([s.count for s in infos], np.int64))
        labels = np.array([hdf5_text(n) for n in names], dtype=h5py.string_dtype())
        _untimed_dataset(meta, "class_names", labels)
    entry.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(entry) as tmp:
            write_new_file(tmp, image[0])
    except OSError as error:
        raise write_error(entry, error) from None
    return manifest


def vds_file_name(path: str) -> str:
    """A virtual dataset's source file name as HDF5 wants it: HDF5 reads ``%`` there as a format
    character (``%b``: the entry file's base name, ``%%``: a percent sign), so a literal ``%``
    in an output's name must be doubled, or plain HDF5 readers look for another file."""
    return path.replace("%", "%%")


def hdf5_text(name: str) -> str:
    """``name`` as valid UTF-8 for an HDF5 string: a name that came from non-UTF-8 bytes on
    disk (Python keeps those bytes as surrogate escapes) is stored with ``\\xNN`` escapes; the
    manifest's JSON keeps the exact name."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return name


def _untimed_dataset(group: h5py.Group, name: str, data: np.ndarray) -> None:
    """A dataset without a creation time stamp (identical runs give identical entry files)."""
    group.create_dataset(name, data=data, track_times=False)
