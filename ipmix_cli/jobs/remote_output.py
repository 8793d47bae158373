"""The augment job's output in a bucket: ``--out s3://bucket/prefix/name.h5``.

The job runs as for a local output, into a local staging folder (``IPMIX_STAGE_DIR``, default
``~/.cache/ipmix/upload/<hash of the URL>``) that holds only the shards in flight and the work
files; each shard is uploaded whole once written and checksummed, and its local copy goes. The
bucket then holds what a local output's folder would, under the same relative names::

    s3://bucket/prefix/name.h5                       the entry, uploaded last
    s3://bucket/prefix/name.shards/shard-00000.h5    one object per shard, with its record
    s3://bucket/prefix/name.shards/.work/...          the job's record while it runs

The rules are the local output's (:mod:`ipmix_cli.jobs.augment_output`): nothing already in the
bucket is replaced without ``--overwrite``; ``--resume`` continues only the same job, keeping
every shard object whose recorded job, index, count and size match (one listing and one HEAD a
shard, nothing downloaded); the entry goes up only after a listing has shown every shard there,
so a reader never sees an entry whose shards are not all up. One job per output on this
machine at a time (a lock on the staging folder); S3 has no lock to take across hosts, so two
hosts writing the same URL are only safe when they run the same job (the objects are then
byte-identical).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ipmix_cli.errors import AugmentError, OutputError, ShardError
from ipmix_cli.fs.lock import exclusive_lock
from ipmix_cli.fs.tree import remove_tree
from ipmix_cli.jobs.augment_output import JOB_FILE, WORK_DIR, AugmentOutput, State
from ipmix_cli.remote.store import ObjectStore
from ipmix_cli.remote.upload import info_from_metadata, stage_root
from ipmix_cli.remote.url import ObjectURL, shards_prefix
from ipmix_cli.shards import ShardInfo, read_manifest, shard_filename, write_entry
from ipmix_cli.shards.layout import LOCK_FILE, SHARD_NAME, SUBFOLDER_NAME

if TYPE_CHECKING:
    from ipmix_cli.jobs.augment_spec import AugmentSpec


def staging_entry(url: ObjectURL) -> Path:
    """The local staging entry of ``url``: one folder per URL, so two jobs writing different
    URLs never share one, and a rerun of the same URL finds its lock and leftovers."""
    digest = hashlib.sha256(str(url).encode()).hexdigest()[:16]
    return (stage_root() / digest / url.name).absolute()


def is_shard_key(relative: str) -> bool:
    """Whether a key relative to the shard prefix names a finished shard (``.work`` is not)."""
    parts = relative.split("/")
    if len(parts) == 1:
        return bool(SHARD_NAME.match(parts[0]))
    return len(parts) == 2 and bool(SUBFOLDER_NAME.match(parts[0]) and SHARD_NAME.match(parts[1]))


class RemoteAugmentOutput(AugmentOutput):
    """The entry object ``url``, its shard objects, and the local staging folder."""

    def __init__(self, url: ObjectURL) -> None:
        super().__init__(staging_entry(url))
        self.url = url
        self.store = ObjectStore(url.bucket)
        self.shards = shards_prefix(url)
        self.work_prefix = self.shards.child(WORK_DIR)

    # -- checks made before any work ---------------------------------------------------------
    def check_names(self) -> None:
        """The bucket can be reached and written with these credentials (a probe object is
        written and removed), and the staging folder can be made."""
        self.store.check_writable(self.url.key)
        super().check_names()

    def check_apart_from(self, inputs: Iterable[Path | None]) -> None:
        """Inputs are local files; a bucket cannot contain them."""

    # -- what is there -----------------------------------------------------------------------
    def shard_objects(self) -> dict[str, int]:
        """Finished shard objects: name relative to the shard prefix -> size."""
        start = len(self.shards.key) + 1
        listed = self.store.list(self.shards.key)
        return {k[start:]: n for k, n in listed.items() if is_shard_key(k[start:])}

    def finished_shards(self) -> list[Path]:  # type: ignore[override]
        """The shards finished so far, as their names would be in the staging folder (the
        base class counts them in messages and decides states with them)."""
        return [self.folder / name for name in sorted(self.shard_objects())]

    def state(self) -> State:
        if self.store.exists(self.url.key):
            return State.FINISHED
        if self.shard_objects():
            return State.UNFINISHED
        if self.store.list(self.shards.key) or self.folder.exists():
            return State.STALE
        return State.ABSENT

    @contextlib.contextmanager
    def lock(self) -> Iterator[bool]:
        """Hold this machine's lock on the URL (the staging folder's); yields whether the
        output was absent, so a failure that committed nothing can remove what it made."""
        created = self.state() is State.ABSENT
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputError(
                self.folder, f"cannot stage shards here ({error.strerror or error})"
            ) from None
        with exclusive_lock(self.folder / LOCK_FILE, Path(str(self.url))):
            yield created

    # -- deciding, under the lock ------------------------------------------------------------
    def claim(self, identity: dict[str, Any], job_hash: str, overwrite: bool, resume: bool) -> bool:
        try:
            return super().claim(identity, job_hash, overwrite, resume)
        except (OutputError, AugmentError) as error:
            if error.path == str(self.entry):  # name the URL, not the staging file
                raise type(error)(str(self.url), error.problem) from None
            raise

    def clear(self) -> None:
        """Remove the entry object, every object under the shard prefix, and the staging."""
        self.store.delete([self.url.key, *self.store.list(self.shards.key)])
        remove_tree(self.entry)
        remove_tree(self.folder, keep={LOCK_FILE})

    def discard_attempt(self) -> None:
        """After a failure that committed no shard: remove the job record and the staging."""
        if self.store.exists(self.url.key) or self.shard_objects():
            return
        self.store.delete(self.store.list(self.work_prefix.key))
        remove_tree(self.folder)

    def _recorded_identity(self) -> dict[str, Any] | None:
        key = self.work_prefix.child(JOB_FILE).key
        if self.store.head(key) is None:
            return None
        try:
            previous = json.loads(self.store.get_bytes(key))
        except ValueError as error:
            raise AugmentError(
                str(self.url),
                f"unreadable record of the interrupted run ({error}); pass --overwrite",
            ) from None
        return previous if isinstance(previous, dict) else None

    def _finished_manifest(self) -> Any:
        local = self.work / "finished-entry.h5"
        local.parent.mkdir(parents=True, exist_ok=True)
        self.store.get_file(self.url.key, local)
        try:
            return read_manifest(local)
        except ShardError as error:
            raise AugmentError(str(self.url), f"{error.problem}; pass --overwrite") from None
        finally:
            local.unlink(missing_ok=True)

    def shard_jobs(self) -> set[str]:
        heads = self.store.heads(self.shards.child(n).key for n in self.shard_objects())
        jobs = set()
        for head in heads.values():
            record = None if head is None else info_from_metadata(head.metadata)
            if record is not None:
                jobs.add(str(record[0].attrs.get("job")))
        return jobs

    # -- the job's steps ---------------------------------------------------------------------
    def record_job(self, identity: bytes) -> None:
        super().record_job(identity)
        self.store.put_bytes(self.work_prefix.child(JOB_FILE).key, identity)

    def work_refs(self, source_file: Path, mixing_file: Path, backend: str) -> tuple[Any, Any]:
        """Local backends read the staging folder; dask workers, which may run on hosts that
        cannot see it, fetch the work files from the bucket."""
        if backend != "dask":
            return source_file, mixing_file
        refs = []
        for path in (source_file, mixing_file):
            if not path.exists():  # the clean export has no mixing set
                refs.append(path)
                continue
            target = self.work_prefix.child(path.name)
            self.store.put_file(path, target.key)
            refs.append(target)
        return refs[0], refs[1]

    def worker_spec(self, spec: AugmentSpec) -> AugmentSpec:
        """Workers stage under this machine's staging folder and upload to the URL."""
        return dataclasses.replace(spec, out=self.entry, remote=self.url)

    def existing_shards(
        self, ranges: Sequence[tuple[int, int]], num_shards: int, job_hash: str
    ) -> dict[int, ShardInfo]:
        """Shard objects this job can keep: their recorded job, index and count are the
        plan's and the listed size is the recorded one (S3 stores an object whole or not at
        all, so a size that matches is the upload that was made)."""
        listed = self.shard_objects()
        names = {i: shard_filename(i, num_shards) for i in range(len(ranges))}
        present = {i: n for i, n in names.items() if n in listed}
        heads = self.store.heads(self.shards.child(n).key for n in present.values())
        found = {}
        for index, name in present.items():
            head = heads[self.shards.child(name).key]
            record = None if head is None else info_from_metadata(head.metadata)
            if record is None:
                continue
            info, size = record
            start, stop = ranges[index]
            if (
                info.index == index
                and info.count == stop - start
                and info.attrs.get("job") == job_hash
                and size == listed[name]
            ):
                found[index] = info
        return found

    def remove_unwanted(self, wanted: set[str]) -> None:
        stale = [n for n in self.shard_objects() if n not in wanted]
        self.store.delete(self.shards.child(n).key for n in stale)

    def local_need(self, need: int, shards: int, workers: int) -> int:
        """Only the shards in flight are on this disk at once: each worker uploads the shard
        it wrote before it writes the next (the bucket's space is the provider's business)."""
        return min(need, need // max(1, shards) * (workers + 1))

    def publish(
        self, infos: Sequence[ShardInfo], about: Mapping[str, Any], class_names: Sequence[str]
    ) -> int:
        """List the shard objects (every one must be up, at its recorded size), write the
        entry file locally, upload it last, then drop the job record and the staging."""
        listed = self.shard_objects()
        missing = [s.file for s in infos if s.file not in listed]
        if missing:
            raise OutputError(
                str(self.shards.child(missing[0])),
                f"shard object is missing after upload ({len(missing)} missing); rerun with "
                "--resume",
            )
        sizes = [listed[s.file] for s in infos]
        write_entry(
            self.entry, infos, about, class_names=class_names, check_shards=False, sizes=sizes
        )
        self.store.put_file(self.entry, self.url.key)
        size = self.entry.stat().st_size + sum(sizes)
        self.store.delete(self.store.list(self.work_prefix.key))
        remove_tree(self.entry)
        with contextlib.suppress(OSError):
            shutil.rmtree(self.work)
        remove_tree(self.folder, keep={LOCK_FILE})
        return size


def output_for(location: Path | ObjectURL) -> AugmentOutput:
    """The output ``--out`` names: a local entry file or an ``s3://`` entry object."""
    if isinstance(location, ObjectURL):
        return RemoteAugmentOutput(location)
    return AugmentOutput(location)
