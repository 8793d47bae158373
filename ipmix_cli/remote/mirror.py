"""An ``s3://`` output looked at through a local mirror: ``ipmix inspect``, ``verify`` and
``preview`` of an entry object.

The entry object is downloaded into a fresh temporary folder under its own name, and shards
are fetched into that folder under their recorded names: the local layout exactly, so the
local code (manifest reading, h5py's virtual datasets, ``ShardReader``, the per-shard checks
of ``verify``) runs on the mirror unchanged. Only what a command needs comes down:

* ``inspect``: the entry, and one listing of the shard prefix (sizes, missing shards);
* ``verify --quick``: the entry, one listing and one HEAD a shard (each shard object present,
  at its recorded size, and, where it carries its own record as ``ipmix-shard`` metadata, with
  the entry's index, count and checksum). No shard is downloaded;
* ``verify``: shard by shard, a few fetched ahead, each checked as a local shard is and then
  deleted, so a handful of shards are on disk at once, never the whole output;
* ``preview``: the shards holding the sheet's rows.

Messages name the objects, never the mirror: a path under the mirror folder is written back as
the ``s3://`` URL it stands for. The folder goes when the command ends, however it ends.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ipmix_cli.cores import resolve_jobs
from ipmix_cli.errors import IpmixError, OutputError, RemoteError, ShardError
from ipmix_cli.fs.atomic import is_temporary_name
from ipmix_cli.remote.store import HEAD_THREADS, ObjectStore
from ipmix_cli.remote.upload import SHARD_METADATA, info_from_metadata
from ipmix_cli.remote.url import ObjectURL, stays_inside
from ipmix_cli.shards import audit
from ipmix_cli.shards.audit import VerifyReport
from ipmix_cli.shards.layout import LOCK_FILE, SUBFOLDER_NAME
from ipmix_cli.shards.manifest import Manifest, ShardRecord, read_manifest

AHEAD = 4
"""Shards a deep ``verify`` downloads ahead of the one it checks (at most ``AHEAD + 1`` shards
are on disk at once)."""

PREFIX = "ipmix-s3-"
"""Name prefix of the temporary mirror folders (under ``TMPDIR``)."""


class Mirror:
    """The entry object ``url`` downloaded into ``folder`` (its :attr:`manifest` read), and
    its shards fetched there on demand under their recorded names. Use :func:`mirrored`."""

    def __init__(self, url: ObjectURL, folder: Path) -> None:
        self.url = url
        self.store = ObjectStore(url.bucket)
        self.folder = folder
        self.entry = folder / url.name
        base = posixpath.dirname(url.key)
        self._base = f"{base}/" if base else ""
        self._shown = f"s3://{url.bucket}/{self._base}"
        self._fetched: set[int] = set()
        self.manifest: Manifest

    # -- names -----------------------------------------------------------------------------
    def key(self, relative: str) -> str:
        """The object key of a name relative to the entry's folder."""
        return self._base + relative

    def shard_url(self, record: ShardRecord) -> ObjectURL:
        return ObjectURL(self.url.bucket, self.key(record.file))

    def shard_path(self, record: ShardRecord) -> Path:
        return self.folder / record.file

    @property
    def shards_dir(self) -> str:
        return self.manifest.shards_dir or f"{self.url.stem}.shards"

    def shown(self, text: str) -> str:
        """``text`` with every mirror path written as the object URL it stands for."""
        return text.replace(f"{self.folder}{os.sep}", self._shown)

    def public_error(self, error: IpmixError) -> IpmixError:
        """``error`` naming objects instead of mirror paths."""
        try:
            if error.path is None:
                return type(error)(self.shown(error.problem))
            return type(error)(self.shown(error.path), self.shown(error.problem))
        except TypeError:  # pragma: no cover - an error class with another constructor
            return error

    # -- fetching --------------------------------------------------------------------------
    def fetch_entry(self) -> Manifest:
        """Download the entry object and read its manifest; a shard recorded outside the
        output's folder (``..``, an absolute name) is refused: it cannot be mirrored."""
        self.store.get_file(self.url.key, self.entry)
        manifest = read_manifest(self.entry)
        names = [manifest.shards_dir] if manifest.shards_dir else []
        for name in [*names, *(s.file for s in manifest.shards)]:
            if not stays_inside(name):
                raise ShardError(
                    str(self.url), f"records {name!r}, outside the output's folder in the bucket"
                )
        self.manifest = manifest
        return manifest

    def fetch(self, record: ShardRecord) -> Path:
        """Download shard ``record`` to its place in the mirror (replacing a stand-in)."""
        path = self.shard_path(record)
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f".{path.name}.part")
        self.store.get_file(self.key(record.file), part)
        os.replace(part, path)
        self._fetched.add(record.index)
        return path

    def drop(self, record: ShardRecord) -> None:
        """Delete the local copy of shard ``record``."""
        self.shard_path(record).unlink(missing_ok=True)
        self._fetched.discard(record.index)

    def fetched(
        self, records: Sequence[ShardRecord], ahead: int = AHEAD
    ) -> Iterator[tuple[ShardRecord, Path]]:
        """Each of ``records``, in order, fetched (``ahead`` downloads in flight while the
        caller works on one) and deleted again once the caller moves on."""
        pool = ThreadPoolExecutor(max(1, ahead))
        queue: deque[tuple[ShardRecord, Future[Path]]] = deque()
        todo = iter(records)

        def submit() -> None:
            record = next(todo, None)
            if record is not None:
                queue.append((record, pool.submit(self.fetch, record)))

        try:
            for _ in range(max(1, ahead)):
                submit()
            while queue:
                record, future = queue.popleft()
                path = future.result()
                submit()
                try:
                    yield record, path
                finally:
                    self.drop(record)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # what is left goes with the folder

    # -- what is in the bucket -------------------------------------------------------------
    def shard_sizes(self) -> tuple[dict[str, int], list[str]]:
        """The size of each recorded shard object present (record file -> bytes) and the
        other objects under the shard prefix (names relative to the entry's folder): one
        listing of the prefix, and a HEAD for any shard recorded outside it."""
        folder = self.shards_dir
        listed = self.store.list(self.key(folder))
        found = {k[len(self._base) :]: n for k, n in listed.items()}
        recorded = {s.file for s in self.manifest.shards}
        outside = sorted(f for f in recorded if not f.startswith(f"{folder}/"))
        if outside:
            heads = self.store.heads(self.key(f) for f in outside)
            found.update({f: h.size for f in outside if (h := heads[self.key(f)]) is not None})
        present = {f: found[f] for f in recorded if f in found}
        return present, sorted(k for k in found if k not in recorded)

    def check_shards(self) -> dict[str, int]:
        """What :func:`~ipmix_cli.shards.check_output` checks, on the objects (one listing):
        every shard object present at its recorded size; the first that is not is named."""
        present, _ = self.shard_sizes()
        for s in self.manifest.shards:
            size = present.get(s.file)
            if size is None:
                raise RemoteError(
                    str(self.shard_url(s)), f"shard is missing (it should hold {s.count} images)"
                )
            if s.bytes is not None and size != s.bytes:
                raise RemoteError(
                    str(self.shard_url(s)),
                    f"shard was replaced or truncated: {size} bytes, the entry records {s.bytes}",
                )
        return present

    def for_reading(self) -> Callable[[Sequence[int]], None]:
        """Make the mirror open as a complete output for ``ShardReader`` while holding only
        the shards that get read; return the function that fetches the shards of given rows
        (call it before reading them).

        The objects are checked first (:meth:`check_shards`: present, recorded sizes); each
        shard not fetched is then stood in for by a sparse file of its recorded size, which is
        what the reader's own check looks at. The reader opens a shard only to read its rows,
        and a stand-in is no HDF5 file, so reading one would fail loudly, never give zeros.
        Shards of an older entry, which records no sizes, are all fetched."""
        self.check_shards()
        for s in self.manifest.shards:
            if s.bytes is None:
                self.fetch(s)
                continue
            path = self.shard_path(s)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as handle:
                handle.truncate(s.bytes)
        starts = np.array([s.start for s in self.manifest.shards], dtype=np.int64)

        def fetch_rows(rows: Sequence[int]) -> None:
            picked = np.unique(np.searchsorted(starts, np.asarray(rows), side="right") - 1)
            wanted = [self.manifest.shards[k] for k in picked.tolist() if k >= 0]
            wanted = [s for s in wanted if s.index not in self._fetched]
            if wanted:
                with ThreadPoolExecutor(min(HEAD_THREADS, len(wanted))) as pool:
                    list(pool.map(self.fetch, wanted))

        return fetch_rows


@contextlib.contextmanager
def mirrored(url: ObjectURL) -> Iterator[Mirror]:
    """A :class:`Mirror` of ``url`` (its entry fetched) in a new temporary folder, removed
    when the block ends; any ipmix error raised in the block names objects, not the mirror."""
    try:
        folder = Path(tempfile.mkdtemp(prefix=PREFIX)).absolute()
    except OSError as error:
        raise OutputError(
            tempfile.gettempdir(), f"cannot make a temporary folder ({error.strerror or error})"
        ) from None
    mirror = Mirror(url, folder)
    try:
        mirror.fetch_entry()
        yield mirror
    except IpmixError as error:
        raise mirror.public_error(error) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- inspect ------------------------------------------------------------------------------------
def inspect_remote(url: ObjectURL) -> dict[str, Any]:
    """:func:`~ipmix_cli.shards.inspect` of an entry object: the entry is downloaded, shard
    sizes and missing shards come from one listing (no shard is downloaded)."""
    with mirrored(url) as mirror:
        info = audit.inspect(mirror.entry)
        present, _ = mirror.shard_sizes()
        total = mirror.entry.stat().st_size
        missing = 0
        for shard in info["shards"]:
            size = present.get(shard["file"])
            shard["bytes"], shard["exists"] = size or 0, size is not None
            missing += size is None
            total += size or 0
        info.update(path=str(url), bytes_on_disk=total, missing_shards=missing)
        return info


# -- verify -------------------------------------------------------------------------------------
def _missing(name: str, record: ShardRecord) -> str:
    return (
        f"{name}: shard is missing (recorded {record.count} images; plain HDF5 readers "
        "see zero images and label -1 there)"
    )


def object_faults(
    name: str, record: ShardRecord, size: int | None, metadata: Mapping[str, str] | None
) -> list[str]:
    """Faults of one shard object, from its listed size and (``metadata`` not ``None``) its
    own record: present, the size the entry records, and the entry's index, count and
    checksum in its ``ipmix-shard`` metadata. Nothing is downloaded."""
    if size is None:
        return [_missing(name, record)]
    faults = []
    if record.bytes is not None and size != record.bytes:
        faults.append(
            f"{name}: shard was replaced or truncated: {size} bytes, the entry records "
            f"{record.bytes}"
        )
    if metadata is None or SHARD_METADATA not in metadata:
        return faults
    own = info_from_metadata(metadata)
    if own is None:
        return [*faults, f"{name}: unreadable '{SHARD_METADATA}' metadata (object replaced?)"]
    info, recorded_size = own
    if info.index != record.index:
        faults.append(
            f"{name}: its own record is shard {info.index}, the entry records {record.index}"
        )
    if info.count != record.count:
        faults.append(
            f"{name}: its own record holds {info.count} images, the entry records {record.count}"
        )
    if info.checksum != record.checksum:
        faults.append(
            f"{name}: its own record's checksum differs from the entry's (shard replaced)"
        )
    if recorded_size != size:
        faults.append(
            f"{name}: {size} bytes, its own record says {recorded_size} (replaced or truncated)"
        )
    return faults


def _leftovers(mirror: Mirror, others: Sequence[str]) -> list[str]:
    """Warnings for objects under the shard prefix that are no recorded shard, one per name
    as a local verify lists them (a folder's objects once, by the folder's name)."""
    folder = mirror.shards_dir
    warnings, seen = [], set()
    for relative in others:
        parts = relative[len(folder) + 1 :].split("/")
        depth = 2 if len(parts) > 1 and SUBFOLDER_NAME.match(parts[0]) else 1
        name = "/".join(parts[:depth])
        if name in seen or name == LOCK_FILE:
            continue
        seen.add(name)
        shown = mirror.url.sibling(f"{folder}/{name}")
        if is_temporary_name(name.rsplit("/", 1)[-1]):
            warnings.append(f"{shown}: leftover temporary file from an interrupted write")
        else:
            warnings.append(f"{shown}: not part of this output")
    return warnings


def verify_remote(url: ObjectURL, *, deep: bool = True, jobs: int = -1) -> VerifyReport:
    """:func:`~ipmix_cli.shards.verify` of an entry object (a ``VerifyReport`` naming
    objects). Quick: one listing and one HEAD a shard, nothing downloaded. Deep: every shard
    fetched, checked as a local one (attributes, datasets, labels, checksum; what a plain HDF5
    reader sees through the entry, on the sampled shards) and deleted, ``min(jobs, AHEAD)``
    downloads in flight."""
    with mirrored(url) as mirror:
        manifest = mirror.manifest
        shards = list(manifest.shards)
        report = VerifyReport(str(url), count=manifest.count, num_shards=len(shards))
        present, others = mirror.shard_sizes()
        # the entry's virtual datasets must map the recorded shards (no shard needed for that)
        view = audit._plain_view_faults(mirror.entry, shards, manifest.count, {}, manifest.codec)
        if deep:
            report.faults.extend(_deep_faults(mirror, present, jobs, view))
        else:
            heads = mirror.store.heads(mirror.key(f) for f in present)
            for s in shards:
                head = heads.get(mirror.key(s.file))
                report.faults.extend(
                    object_faults(
                        str(mirror.shard_url(s)),
                        s,
                        None if head is None else head.size,
                        None if head is None else head.metadata,
                    )
                )
        report.faults.extend(view)
        report.shards_checked = len(shards)
        report.warnings.extend(_leftovers(mirror, others))
        report.faults = [mirror.shown(f) for f in report.faults]
        report.warnings = [mirror.shown(w) for w in report.warnings]
        return report


def _deep_faults(
    mirror: Mirror, present: Mapping[str, int], jobs: int, view: list[str]
) -> list[str]:
    """Every shard's faults: its object's size, then the local deep check on a fetched copy;
    the sampled shards are also read through the entry while they are here (unless the
    entry's mapping is wrong already: ``view`` holds that fault). Extends ``view`` with the
    faults of what a plain reader sees."""
    manifest = mirror.manifest
    shards = list(manifest.shards)
    picks = np.linspace(0, len(shards) - 1, min(len(shards), audit._SAMPLED_SHARDS)).astype(int)
    sampled = {shards[k].index for k in np.unique(picks).tolist()}
    coding = (manifest.codec, manifest.quality)
    n_classes = len(manifest.class_names)
    mapped = not view
    faults: list[str] = []
    here = [s for s in shards if s.file in present]
    ahead = max(1, min(AHEAD, resolve_jobs(jobs)))
    fetched = mirror.fetched(here, ahead)
    try:
        for s in shards:
            faults.extend(object_faults(str(mirror.shard_url(s)), s, present.get(s.file), None))
            if s.file not in present:
                continue
            record, path = next(fetched)
            held: dict[int, dict[str, np.ndarray]] = {}
            faults.extend(
                audit._verify_shard(
                    path, record, manifest.mode, manifest.image_shape, n_classes, True, held, coding
                )
            )
            if mapped and record.index in sampled and held:
                view.extend(
                    audit._plain_view_faults(
                        mirror.entry, shards, manifest.count, held, manifest.codec
                    )
                )
    finally:
        fetched.close()  # the last local copy goes; downloads in flight are waited for
    return faults
