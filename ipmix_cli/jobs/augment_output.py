"""The augment job's output on disk: what is there, who may write it, and what may be removed.

An output is the entry file ``OUT.h5`` and the folder ``OUT.shards`` (shards, the job's work
folder ``.work`` while it runs, and the ``.lock`` file). Rules, checked before any work:

* Nothing the user already has is replaced without ``--overwrite``; nothing that is an input
  (the data set, the mixing set, a labels file) is ever removed, even with ``--overwrite``.
* ``--resume`` continues only the same job: same inputs, options and library versions, whether
  the earlier run was interrupted or finished; anything else is refused, naming what differs.
* A failed or stopped attempt that committed no shard blocks nothing: the next run clears it.
* One job per output at a time (:mod:`ipmix_cli.fs.lock`).
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ipmix_cli.errors import AugmentError, OutputError, ShardError
from ipmix_cli.fs.atomic import write_bytes_atomic
from ipmix_cli.fs.lock import exclusive_lock
from ipmix_cli.fs.tree import nearest_existing, remove_tree
from ipmix_cli.jobs.estimate import check_space
from ipmix_cli.shards import (
    Manifest,
    ShardInfo,
    read_manifest,
    read_shard_info,
    shard_dir,
    shard_filename,
    shard_is_valid,
    write_entry,
)
from ipmix_cli.shards.layout import LOCK_FILE, shard_files_in, shard_relpath

if TYPE_CHECKING:
    from ipmix_cli.jobs.augment_spec import AugmentSpec

WORK_DIR = ".work"
JOB_FILE = "job.json"

_WHAT = {
    "environment": "library versions",
    "config": "recipe options",
    "seed": "seed",
    "copies": "copies",
    "rows_per_shard": "shard size",
    "compression": "compression",
    "source": "input data",
    "source_count": "number of input images",
    "mixing_set": "mixing set",
}


class State(enum.Enum):
    ABSENT = "absent"  # nothing there
    STALE = "stale"  # a folder with no finished shard and no entry: an attempt that failed early
    UNFINISHED = "unfinished"  # finished shards, no entry file: an interrupted run
    FINISHED = "finished"  # an entry file


class AugmentOutput:
    """``OUT.h5`` and ``OUT.shards`` of one job."""

    def __init__(self, entry: Path) -> None:
        self.entry = Path(entry).absolute()
        self.folder = shard_dir(self.entry)
        self.work = self.folder / WORK_DIR
        self.job_file = self.work / JOB_FILE

    # -- checks made before any work (nothing is written) -----------------------------------
    def check_names(self) -> None:
        """The names can be written: valid UTF-8 (HDF5 file names in the entry file must be),
        an entry file name rather than a folder, a shard folder that is not a file, and a place
        this process may create them in."""
        for path in (self.entry, self.folder):
            try:
                os.fsencode(path).decode("utf-8")
            except UnicodeDecodeError:
                raise OutputError(
                    path, "name is not valid UTF-8; HDF5 cannot record it, choose another --out"
                ) from None
        if self.entry.is_dir():
            raise OutputError(self.entry, "is a folder; --out names the entry file, e.g. data.h5")
        if self.folder.exists() and not self.folder.is_dir():
            raise OutputError(self.folder, "exists and is not a folder; move it away")
        parent = nearest_existing(self.entry.parent)
        if not parent.is_dir():
            raise OutputError(self.entry, f"cannot write here ({parent} is not a folder)")
        probe = self.folder if self.folder.is_dir() else parent
        if not os.access(probe, os.W_OK | os.X_OK):
            raise OutputError(self.entry, f"cannot write here ({probe} is not writable)")

    def check_apart_from(self, inputs: Iterable[Path | None]) -> None:
        """No input is, or lies inside, what this output writes or removes."""
        mine = [self.entry, self.folder]
        for given in inputs:
            if given is None:
                continue
            path = Path(given).absolute().resolve()
            for own in mine:
                own = own.resolve()
                if path == own or own in path.parents:
                    raise OutputError(
                        self.entry,
                        f"the input {given} is part of this output; choose another --out",
                    )
        # An output inside an input folder is fine: the folder's scan skips it.

    # -- what is there -----------------------------------------------------------------------
    def finished_shards(self) -> list[Path]:
        return shard_files_in(self.folder)

    def state(self) -> State:
        if self.entry.exists():
            return State.FINISHED
        if self.finished_shards():
            return State.UNFINISHED
        if self.folder.exists():
            return State.STALE
        return State.ABSENT

    @contextlib.contextmanager
    def lock(self) -> Iterator[bool]:
        """Create the shard folder if needed and hold the output's lock; yields whether this
        call created the folder (so a failure that committed nothing can remove it again)."""
        created = not self.folder.exists()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputError(
                self.entry, f"cannot write here ({error.strerror or error})"
            ) from None
        with exclusive_lock(self.folder / LOCK_FILE, self.entry):
            yield created

    # -- deciding, under the lock ------------------------------------------------------------
    def claim(self, identity: dict[str, Any], job_hash: str, overwrite: bool, resume: bool) -> bool:
        """Make the output ready for the job ``identity``; return whether shards already there
        may be reused. Refuses (one line) whatever would replace a user's output without
        ``--overwrite`` or mix shards of two different jobs."""
        state = self.state()
        if overwrite:
            self.clear()
            return False
        if state is State.FINISHED:
            if not resume:
                raise OutputError(self.entry, "output exists; pass --overwrite to replace it")
            manifest = self._finished_manifest()
            if manifest.job != job_hash:  # the hash decides; the fields only name what differs
                previous = self._identity_of(manifest)
                self._same_job(previous, identity, "the finished output", known=True)
            return True
        if state is State.UNFINISHED:
            if not resume:
                raise OutputError(
                    self.entry,
                    f"an interrupted run left {len(self.finished_shards())} finished shards "
                    "here; pass --resume to continue it or --overwrite to start again",
                )
            previous = self._recorded_identity()
            if previous is not None:
                self._same_job(previous, identity, "the interrupted run")
            elif self.shard_jobs() - {job_hash}:
                raise AugmentError(
                    self.entry,
                    "cannot resume: the finished shards here were made by another job (other "
                    "inputs or options); pass --overwrite to start again",
                )
            return True
        if state is State.STALE:
            self.clear()  # an attempt that committed nothing: nothing to keep
        return False

    def clear(self) -> None:
        """Remove the entry file and everything in the shard folder but the lock."""
        remove_tree(self.entry)
        remove_tree(self.folder, keep={LOCK_FILE})

    def discard_attempt(self) -> None:
        """After a failure that committed no shard: leave no trace of this attempt."""
        if not self.entry.exists() and not self.finished_shards():
            remove_tree(self.folder)

    # -- the job's steps that depend on where the output lives --------------------------------
    def record_job(self, identity: bytes) -> None:
        """Keep the job's identity beside its shards, for a later ``--resume`` to compare."""
        write_bytes_atomic(self.job_file, identity)

    def work_refs(self, source_file: Path, mixing_file: Path, backend: str) -> tuple[Any, Any]:
        """Where workers find the job's source and mixing set: here, the work folder itself
        (a dask cluster must share this file system)."""
        return source_file, mixing_file

    def worker_spec(self, spec: AugmentSpec) -> AugmentSpec:
        """The spec workers write from: this output's own."""
        return spec

    def existing_shards(
        self, ranges: Sequence[tuple[int, int]], num_shards: int, job_hash: str
    ) -> dict[int, ShardInfo]:
        """The shards already here that a resume keeps: this job's, complete, re-hashed."""
        found = {}
        for index, (start, stop) in enumerate(ranges):
            path = self.folder / shard_filename(index, num_shards)
            expected = {"count": stop - start, "index": index, "attrs": {"job": job_hash}}
            if shard_is_valid(path, expected):
                found[index] = read_shard_info(path)
        return found

    def remove_unwanted(self, wanted: set[str]) -> None:
        """Drop finished shards that are not part of this job's plan."""
        for stale in self.finished_shards():
            if shard_relpath(stale) not in wanted:
                stale.unlink()

    def local_need(self, need: int, shards: int, workers: int) -> int:
        """Bytes this disk must hold for ``shards`` shards of ``need`` bytes in all: all."""
        return need

    def check_space(self, need: int, shards: int, workers: int) -> None:
        """Refuse to start when the shards still to make cannot fit where they go."""
        check_space(self.entry, self.local_need(need, shards, workers))

    def publish(
        self, infos: Sequence[ShardInfo], about: Mapping[str, Any], class_names: Sequence[str]
    ) -> int:
        """Write the entry file joining ``infos`` (each just committed or deep-checked, so not
        re-read), drop the work folder; return the output's size in bytes."""
        write_entry(self.entry, infos, about, class_names=class_names, check_shards=False)
        remove_tree(self.work)
        return self.entry.stat().st_size + sum(p.stat().st_size for p in self.finished_shards())

    def _recorded_identity(self) -> dict[str, Any] | None:
        if not self.job_file.exists():
            return None
        try:
            previous = json.loads(self.job_file.read_text())
        except (OSError, ValueError) as error:
            raise AugmentError(
                self.job_file,
                f"unreadable record of the interrupted run ({error}); pass --overwrite to start "
                "again",
            ) from None
        if not isinstance(previous, dict):
            raise AugmentError(
                self.job_file, "not a record of an ipmix run; pass --overwrite to start again"
            )
        return previous

    def _finished_manifest(self) -> Manifest:
        try:
            return read_manifest(self.entry)
        except ShardError as error:
            raise AugmentError(f"{error}; pass --overwrite to replace it") from None

    @staticmethod
    def _identity_of(m: Manifest) -> dict[str, Any]:
        """The resume identity a finished output's manifest describes (to name what differs)."""
        source = m.source or {}
        return {
            "environment": m.environment,
            "config": m.config,
            "seed": m.seed,
            "copies": m.copies,
            "rows_per_shard": m.rows_per_shard,
            "compression": m.compression,
            "codec": m.codec,
            "quality": m.quality if m.codec == "jpeg" else None,
            "clean": bool(m.extra.get("clean", False)),
            "source": source.get("fingerprint"),
            "source_count": m.num_sources,
            "mixing_set": m.mixing_set,
        }

    def _same_job(
        self, previous: dict[str, Any], identity: dict[str, Any], what: str, known: bool = False
    ) -> None:
        """Refuse unless ``previous`` is ``identity``; ``known``: they are already known to
        differ (the job hashes did), and the fields only name how."""
        changed = [key for key in identity if previous.get(key) != identity[key]]
        if changed or known:
            differ = ", ".join(_WHAT.get(key, key) for key in changed) or "the job's record"
            raise AugmentError(
                self.entry,
                f"cannot resume: {differ} differ from {what}; resume with the same inputs and "
                "options, or pass --overwrite to start again",
            )

    def shard_jobs(self) -> set[str]:
        """The job hashes recorded in the finished shards (a run with no record left); an
        unreadable shard counts for nothing, it is recomputed."""
        jobs = set()
        for path in self.finished_shards():
            with contextlib.suppress(ShardError):
                jobs.add(str(read_shard_info(path).attrs.get("job")))
        return jobs
