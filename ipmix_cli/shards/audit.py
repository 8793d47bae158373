"""Checking an output end to end (``ipmix verify``) and describing it (``ipmix inspect``).

Coded outputs (JPEG or PNG rows) are checked like raw ones, with their own shapes: each image
dataset must be a variable-length uint8 dataset of ``n`` rows carrying the manifest's codec,
quality and image shape; the checksum is recomputed over the stored rows; the first and last
row of every image dataset must decode to the recorded shape; and, since their entry has no
image virtual datasets, the plain-reader check follows ``ipmix/shard_files`` to the shard and
decodes rows there the way ``docs/format.md`` shows.
"""

from __future__ import annotations

import io
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image

from ipmix_cli.cores import resolve_jobs
from ipmix_cli.errors import one_line
from ipmix_cli.fs.atomic import is_temporary_name
from ipmix_cli.shards.attrs import decode_attr
from ipmix_cli.shards.checksum import file_checksum, method_of
from ipmix_cli.shards.codec import (
    dataset_codec,
    dataset_image_shape,
    dataset_quality,
    decode_one,
    is_coded,
)
from ipmix_cli.shards.entry import hdf5_text, vds_file_name
from ipmix_cli.shards.layout import (
    FILL_INDEX,
    IMAGE_DATASETS,
    INDEX_DATASETS,
    LOCK_FILE,
    META_GROUP,
    SHARD_KIND,
    datasets_for,
    shard_dir,
    shard_subfolders,
)
from ipmix_cli.shards.manifest import Manifest, ShardRecord, load_manifest, read_manifest


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
    rec: ShardRecord,
    mode: str,
    image_shape: Sequence[int],
    n_classes: int,
    deep: bool,
    seen: dict[int, dict[str, np.ndarray]],
    coding: tuple[str, int | None] = ("raw", None),
) -> list[str]:
    """Faults of one shard; its labels and first and last images go into ``seen`` (for the
    comparison with what a plain HDF5 reader sees through the entry file). ``coding`` is the
    output's ``(codec, quality)``."""
    faults: list[str] = []
    name = str(p)
    if not p.is_file():
        return [
            f"{name}: shard is missing (recorded {rec.count} images; plain HDF5 readers "
            "see zero images and label -1 there)"
        ]
    want_sets = datasets_for(mode)
    n = rec.count
    try:
        with h5py.File(p, "r") as f:
            a = {k: decode_attr(v) for k, v in f.attrs.items()}
            if a.get("kind") != SHARD_KIND:
                faults.append(f"{name}: not an ipmix shard (kind={a.get('kind')!r})")
            if a.get("shard_index") != rec.index:
                faults.append(f"{name}: shard_index {a.get('shard_index')} != {rec.index}")
            if a.get("count") != n:
                faults.append(f"{name}: count attribute {a.get('count')}, entry records {n}")
            if a.get("checksum") != rec.checksum:
                faults.append(f"{name}: stored checksum differs from the entry's record")
            h, w = int(image_shape[0]), int(image_shape[1])
            for ds in want_sets:
                if ds not in f:
                    faults.append(f"{name}: dataset '{ds}' is missing")
                    continue
                dset = f[ds]
                is_img = ds in IMAGE_DATASETS
                if is_img and coding[0] != "raw":
                    faults.extend(_coded_faults(name, ds, dset, n, (h, w, 3), coding))
                    continue
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
            images = f["images"]
            if coding[0] != "raw":
                ends, bad = _decoded_ends(name, f, want_sets, n, coding[0])
                faults.extend(bad)
            else:
                ends = np.stack([images[0], images[n - 1]]) if n > 1 else images[0:1]
            seen[rec.index] = {"labels": labels, "ends": ends}
            if n_classes and labels.size and labels.max() >= n_classes:
                faults.append(
                    f"{name}: label {int(labels.max())} out of range for {n_classes} classes"
                )
            if deep:
                actual = file_checksum(f, method_of(rec.checksum))
                if actual != rec.checksum:
                    faults.append(
                        f"{name}: checksum mismatch (data changed or corrupt): "
                        f"recorded {rec.checksum[:23]}..., computed {actual[:23]}..."
                    )
    except (OSError, KeyError, ValueError, RuntimeError) as error:
        faults.append(f"{name}: unreadable (truncated or corrupt): {one_line(error, 160)}")
    return faults


def _coded_faults(
    name: str,
    ds: str,
    dset: h5py.Dataset,
    n: int,
    image_shape: tuple[int, int, int],
    coding: tuple[str, int | None],
) -> list[str]:
    """What is wrong with coded image dataset ``ds`` of shard ``name``, against the output's
    ``coding`` (codec, quality) and image shape."""
    codec, quality = coding
    if not is_coded(dset) or dset.shape != (n,) or h5py.check_vlen_dtype(dset.dtype) != np.uint8:
        return [f"{name}: '{ds}' is {dset.dtype} {dset.shape}, expected {n} {codec} rows"]
    try:
        found = (dataset_codec(dset), dataset_quality(dset), dataset_image_shape(dset))
    except ValueError as error:
        return [f"{name}: {one_line(error, 200)}"]
    if found[0] != codec or (codec == "jpeg" and quality is not None and found[1] != quality):
        return [
            f"{name}: '{ds}' holds {found[0]} (quality {found[1]}), the entry records "
            f"{codec} (quality {quality})"
        ]
    if found[2] != image_shape:
        return [f"{name}: '{ds}' records images of {found[2]}, expected {image_shape}"]
    return []


def _decoded_ends(
    name: str, f: h5py.File, datasets: Sequence[str], n: int, codec: str
) -> tuple[np.ndarray | None, list[str]]:
    """The first and last ``images`` rows of a coded shard, decoded, and the faults of any
    image dataset whose first or last row does not decode to its image shape."""
    faults: list[str] = []
    ends = None
    rows = [0, n - 1] if n > 1 else [0]
    for ds in (d for d in datasets if d in IMAGE_DATASETS):
        dset = f[ds]
        shape = dataset_image_shape(dset)
        decoded = []
        for row in rows:
            try:
                image = decode_one(dset[row], codec)
            except Exception as error:  # Pillow's OSError, SyntaxError, ValueError...
                faults.append(f"{name}: '{ds}' row {row} does not decode: {one_line(error, 160)}")
                break
            if image.shape != shape:
                faults.append(f"{name}: '{ds}' row {row} decodes to {image.shape}, not {shape}")
                break
            decoded.append(image)
        else:
            if ds == "images":
                ends = np.stack(decoded)
    return ends, faults


_SAMPLED_SHARDS = 64
"""Shards read through the entry file by ``verify``, spread over the output: a name HDF5
resolves differently breaks every shard alike, and reading all rows of an entry with 20,000
virtual sources takes HDF5 over a minute."""


def _plain_view_faults(
    entry: Path,
    shards: Sequence[ShardRecord],
    count: int,
    seen: dict[int, dict[str, np.ndarray]],
    codec: str = "raw",
    manifest: Manifest | None = None,
) -> list[str]:
    """What a plain HDF5 reader gets through the entry file, against the shards themselves (on
    a sample of shards): a source file name HDF5 resolves differently (a ``%`` in a name, say)
    gives it label -1 and black images without any error, and only reading through the entry
    shows that. A coded output has no image virtual dataset: its mapping is checked on
    ``labels``, and its images the way a plain reader gets them (:func:`_plain_decoded`).

    First the entry file itself is checked against ``manifest`` (read from ``entry`` when not
    given), as :func:`_entry_faults` says; rows are only read through an entry whose datasets
    have the shapes and mapping the manifest records, since reading a malformed one would
    compare nonsense (or fail)."""
    try:
        if manifest is None:
            manifest = load_manifest(entry)[0]
        picks = np.unique(np.linspace(0, len(shards) - 1, min(len(shards), _SAMPLED_SHARDS)))
        picks = picks.astype(int).tolist()
        with h5py.File(entry, "r") as f:
            faults = _entry_faults(entry, f, manifest, picks)
            if faults:
                return faults
            dset = f["images" if codec == "raw" else "labels"]
            for k in picks:
                s = shards[k]
                if s.index not in seen:
                    continue  # missing or unreadable: reported already
                labels = f["labels"][s.start : s.start + s.count]
                rows = [s.start, s.start + s.count - 1] if s.count > 1 else [s.start]
                if not np.array_equal(labels, seen[s.index]["labels"]):
                    first = int(labels[0]) if labels.size else None
                    faults.append(
                        f"{entry}: plain HDF5 readers do not reach {s.file} through the entry "
                        f"file (label {first} at row {s.start})"
                    )
                elif codec != "raw":
                    faults.extend(_plain_decoded(entry, f, k, s, seen[s.index]["ends"]))
                elif not np.array_equal(dset[rows], seen[s.index]["ends"]):
                    faults.append(f"{entry}: plain HDF5 readers see other images than {s.file}")
            return faults
    except (OSError, KeyError, ValueError) as error:
        return [f"{entry}: unreadable entry datasets: {one_line(error, 160)}"]


def _entry_faults(entry: Path, f: h5py.File, manifest: Manifest, picks: Sequence[int]) -> list[str]:
    """What docs/format.md tells a plain HDF5 reader to rely on in the entry file ``f``,
    against its ``manifest``: the root attributes (``count``, ``mode``, ``num_shards``,
    ``shards_dir``, ``codec``, ``quality``), the lists ``shard_files``, ``shard_counts`` and
    ``class_names`` (datasets under ``ipmix/`` in format 2, root attributes in format 1), and
    each virtual dataset's dtype, shape, fill value (-1 is how a plain reader tells a missing
    shard) and mapping: every shard of ``images`` (``labels`` for a coded output, which has no
    image datasets), the shards ``picks`` of the other datasets. Our own readers go by the
    manifest alone, so nothing else would notice an entry that misleads plain readers."""
    faults: list[str] = []
    shards, count, codec = manifest.shards, manifest.count, manifest.codec
    wanted: dict[str, Any] = {
        "count": count,
        "mode": manifest.mode,
        "num_shards": len(shards),
        "shards_dir": manifest.shards_dir,
        "codec": None if codec == "raw" else codec,
        "quality": manifest.quality if codec == "jpeg" else None,
    }
    for key, value in wanted.items():
        found = decode_attr(f.attrs.get(key))
        if found != value or isinstance(found, bool):
            shown = "absent" if found is None else repr(found)
            faults.append(
                f"{entry}: root attribute '{key}' is {shown}, the manifest records "
                + ("none" if value is None else repr(value))
            )
    lists = {
        "shard_files": ("shard files", [s.file for s in shards]),
        "shard_counts": ("shard counts", [s.count for s in shards]),
        "class_names": ("class names", [hdf5_text(n) for n in manifest.class_names]),
    }
    for key, (what, want) in lists.items():
        if manifest.format_version >= 2:
            where, stored = f"'{META_GROUP}/{key}'", f.get(f"{META_GROUP}/{key}")
            value = stored[()] if isinstance(stored, h5py.Dataset) else None
        else:  # format 1 kept the lists as root attributes
            where, value = f"root attribute '{key}'", f.attrs.get(key)
        if value is None:
            faults.append(f"{entry}: {where} is missing (plain HDF5 readers rely on it)")
            continue
        got = _listed(value, numbers=key == "shard_counts")
        if got is None:
            faults.append(f"{entry}: {where} is not a list of {what}")
        elif len(got) != len(want):
            faults.append(
                f"{entry}: {where} holds {len(got)} entries, the manifest records {len(want)} "
                f"{what}"
            )
        elif got != want:
            i = next(i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b)
            faults.append(f"{entry}: {where} differs from the manifest's {what} at entry {i}")
    if codec != "raw":
        faults.extend(
            f"{entry}: '{name}' is in the entry of a {codec} output (coded images live in the "
            "shards only)"
            for name in IMAGE_DATASETS
            if name in f
        )
    joined = [n for n in datasets_for(manifest.mode) if codec == "raw" or n not in IMAGE_DATASETS]
    h, w = manifest.image_shape[0], manifest.image_shape[1]
    everything = list(range(len(shards)))
    for name in joined:
        dset = f.get(name)
        if not isinstance(dset, h5py.Dataset):
            faults.append(f"{entry}: dataset '{name}' is missing")
            continue
        is_img = name in IMAGE_DATASETS
        shape = (count, h, w, 3) if is_img else (count,)
        dtype = np.dtype(np.uint8) if is_img else np.dtype("<i8")
        if dset.shape != shape or dset.dtype != dtype:
            faults.append(
                f"{entry}: '{name}' is {dset.dtype} {dset.shape}, expected {dtype} {shape}"
            )
            continue
        fill = 0 if is_img else FILL_INDEX
        if dset.fillvalue != fill:
            faults.append(
                f"{entry}: '{name}' has fill value {dset.fillvalue}, not {fill} (what plain HDF5 "
                "readers see for a missing shard)"
            )
        if not dset.is_virtual:
            faults.append(f"{entry}: '{name}' is not a virtual dataset over the shards")
            continue
        fault = _mapping_fault(
            entry, name, dset, shards, everything if name == joined[0] else picks
        )
        if fault:
            faults.append(fault)
    return faults


def _listed(value: Any, numbers: bool) -> list[Any] | None:
    """A stored list (an h5py dataset's or attribute's value) as Python strings, or integers
    when ``numbers``; ``None`` when it is not a one-dimensional list of those."""
    array = np.asarray(value)
    if array.ndim != 1:
        return None
    if numbers:
        return array.tolist() if array.dtype.kind in "iu" else None
    out = []
    for item in array.tolist():
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError:
                return None
        if not isinstance(item, str):
            return None
        out.append(item)
    return out


def _mapping_fault(
    entry: Path, name: str, dset: h5py.Dataset, shards: Sequence[ShardRecord], ks: Sequence[int]
) -> str | None:
    """Whether virtual dataset ``name`` maps one source per shard and, for shards ``ks``,
    shard ``k``'s dataset ``name`` onto the rows the manifest records for it (read from the
    dataset's creation properties: no shard is opened)."""
    plist = dset.id.get_create_plist()
    n = plist.get_virtual_count()
    if n != len(shards):
        return (
            f"{entry}: virtual datasets do not map the recorded shards ('{name}' maps {n} "
            f"sources, the manifest records {len(shards)} shards)"
        )
    for k in ks:
        s = shards[k]
        bounds = plist.get_virtual_vspace(k).get_select_bounds()
        rows = (bounds[0][0], bounds[1][0]) if bounds else None
        if (
            plist.get_virtual_filename(k) != vds_file_name(s.file)
            or plist.get_virtual_dsetname(k) != name
            or rows != (s.start, s.start + s.count - 1)
        ):
            return (
                f"{entry}: virtual datasets do not map the recorded shards ('{name}' source "
                f"{k} is not rows {s.start}..{s.start + s.count - 1} of {s.file})"
            )
    return None


def _plain_decoded(
    entry: Path, f: h5py.File, k: int, s: ShardRecord, ends: np.ndarray | None
) -> list[str]:
    """A coded shard's first and last images as a plain reader gets them, following the
    entry's ``ipmix/shard_files`` and decoding with plain h5py and Pillow as docs/format.md
    shows, against what ``verify`` decoded from the recorded shard."""
    if ends is None:
        return []  # a row that does not decode: reported already
    files = f.get(f"{META_GROUP}/shard_files")
    listed = files[k].decode() if isinstance(files, h5py.Dataset) else s.file
    if listed != s.file:
        return [f"{entry}: ipmix/shard_files names {listed!r} for shard {s.index}, not {s.file}"]
    rows = [0, s.count - 1] if s.count > 1 else [0]
    with h5py.File(entry.parent / listed, "r") as shard:
        plain = [
            np.asarray(Image.open(io.BytesIO(shard["images"][row].tobytes())).convert("RGB"))
            for row in rows
        ]
    if not np.array_equal(np.stack(plain), ends):
        return [f"{entry}: plain h5py + Pillow readers see other images than {s.file}"]
    return []


_PARALLEL_FROM = 1000  # shards: below this, starting worker processes costs more than it saves
_CHUNK = 250


def _verify_chunk(
    work: tuple, records: list[ShardRecord]
) -> tuple[list[str], dict[int, dict[str, np.ndarray]]]:
    """Verify ``records``; return their faults and what the sampled ones hold."""
    root, mode, image_shape, n_classes, deep, sampled, coding = work
    faults: list[str] = []
    seen: dict[int, dict[str, np.ndarray]] = {}
    for rec in records:
        held: dict[int, dict[str, np.ndarray]] = {}
        faults.extend(
            _verify_shard(root / rec.file, rec, mode, image_shape, n_classes, deep, held, coding)
        )
        if rec.index in sampled:
            seen.update(held)
    return faults, seen


def _map_chunks(function: Any, work: tuple, records: list[ShardRecord], jobs: int) -> Iterator:
    """``function(work, chunk)`` over chunks of ``records``, in order; in worker processes for
    a large output (h5py runs one call at a time per process, and an output of 20,000 shards
    takes HDF5 about a minute per core just to open and read)."""
    chunks = [records[i : i + _CHUNK] for i in range(0, len(records), _CHUNK)]
    workers = min(resolve_jobs(jobs), len(chunks))
    if workers <= 1 or len(records) < _PARALLEL_FROM:
        for chunk in chunks:
            yield function(work, chunk)
        return
    context = multiprocessing.get_context("spawn")  # no inherited HDF5 or thread state
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        yield from pool.map(function, [work] * len(chunks), chunks)


def verify(
    entry_path: str | os.PathLike[str], *, deep: bool = True, jobs: int = -1
) -> VerifyReport:
    """Check an output end to end and list every fault found (does not stop at the first).

    Checks: everything a reader refuses when it opens the output (:func:`load_manifest`: shard
    counts and starts adding up, copies x sources, the ``format_version`` attribute), all of it
    rather than the first, from the same function the readers use, so verify cannot pass what
    they refuse; every shard present and readable; attributes, dataset shapes and dtypes as the
    entry records; data checksums match (``deep``; reads everything); labels within the class
    names; the entry's root attributes, ``ipmix/`` lists and virtual datasets as docs/format.md
    promises plain HDF5 readers (:func:`_entry_faults`), and what such a reader sees through
    them (every label, the first and last image of shards spread over the output) is what the
    shards hold. Raises :class:`ShardError` only when ``entry_path`` is not a readable ipmix
    entry file at all (or one of a newer format). ``jobs`` worker processes share a large
    output's shards (-1: every core).
    """
    entry = Path(entry_path).absolute()
    manifest, refused = load_manifest(entry)  # what every reader refuses, all of it
    shards = manifest.shards
    report = VerifyReport(str(entry), count=manifest.count, num_shards=len(shards))
    report.faults.extend(f"{entry}: {fault}" for fault in refused)
    n_classes = len(manifest.class_names)
    mode = manifest.mode
    image_shape = manifest.image_shape
    picks = np.linspace(0, len(shards) - 1, min(len(shards), _SAMPLED_SHARDS)).astype(int)
    sampled = {shards[k].index for k in np.unique(picks).tolist()}
    coding = (manifest.codec, manifest.quality)
    work = (entry.parent, mode, image_shape, n_classes, deep, sampled, coding)
    seen: dict[int, dict[str, np.ndarray]] = {}
    for faults, part in _map_chunks(_verify_chunk, work, list(shards), jobs):
        report.faults.extend(faults)
        seen.update(part)
    report.shards_checked = len(shards)
    report.faults.extend(
        _plain_view_faults(entry, shards, report.count, seen, manifest.codec, manifest)
    )
    folder = entry.parent / (manifest.shards_dir or shard_dir(entry).name)
    known = {(entry.parent / s.file).absolute() for s in shards}
    places = [folder, *shard_subfolders(folder)]
    for place in places if folder.is_dir() else []:
        for extra in sorted(place.iterdir()):
            if extra.absolute() in known or extra.name == LOCK_FILE or extra in places:
                continue
            if is_temporary_name(extra.name):
                report.warnings.append(
                    f"{extra}: leftover temporary file from an interrupted write"
                )
            else:
                report.warnings.append(f"{extra}: not part of this output")
    return report


def inspect(entry_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Summary of an output for humans and scripts (reads attributes only; never hashes).

    Keys: path, format_version, tool_version, count, mode, codec (raw, jpeg or png), quality
    (JPEG's, else None), num_shards, image_shape, class_names, class_labels (a ``--classes``
    map's human labels, else the names), num_classes, bytes_on_disk
    (entry + shards present), missing_shards, config, seed, source, skipped, shards (index,
    file, start, count, checksum, bytes, exists).
    """
    entry = Path(entry_path).absolute()
    manifest = read_manifest(entry)
    shards = []
    total = entry.stat().st_size
    missing = 0
    for s in manifest.shards:
        p = entry.parent / s.file
        exists = p.is_file()
        size = p.stat().st_size if exists else 0
        missing += not exists
        total += size
        shards.append({**s.to_dict(), "bytes": size, "exists": exists})
    names = list(manifest.class_names)
    return {
        "path": str(entry),
        "format_version": manifest.format_version,
        "tool_version": manifest.tool_version,
        "count": manifest.count,
        "mode": manifest.mode,
        "codec": manifest.codec,
        "quality": manifest.quality,
        "num_shards": len(shards),
        "image_shape": list(manifest.image_shape),
        "class_names": names,
        "class_labels": list(manifest.class_labels or names),
        "num_classes": len(names),
        "bytes_on_disk": total,
        "missing_shards": missing,
        "config": manifest.config,
        "seed": manifest.seed,
        "source": manifest.source,
        "skipped": manifest.skipped or [],
        "shards": shards,
    }
