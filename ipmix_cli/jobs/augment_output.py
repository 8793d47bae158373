"""The augment job's output on disk: what is there, who may write it, and what may be removed.

An output is the entry file ``OUT.h5`` and the folder ``OUT.shards`` (shards, the job's work
folder ``.work`` while it runs, and the ``.lock`` file). Rules, checked before any work:

* Nothing the user already has is replaced without ``--overwrite``: a shard folder holding
  files ipmix does not write there is refused before any work. Nothing that is an input (the
  data set, the mixing set, a labels or classes file, the sibling files a source reads, the
  shard folder of an HDF5 input) is ever replaced or removed, even with ``--overwrite``: neither
  the entry file nor the shard folder may be, contain or lie inside one.
* A shard folder is named after the entry's stem (``docs/format.md``), so ``c.h5``, ``c.hdf5``
  and ``c`` would share ``c.shards``: a folder that belongs to another existing entry file is
  never touched, even with ``--overwrite``. A shard folder that is a symbolic link is refused
  (ipmix would write its lock and shards into whatever folder it points at).
* ``--resume`` continues only the same job: same inputs, options and library versions, whether
  the earlier run was interrupted or finished; anything else is refused, naming what differs.
* A failed or stopped attempt that committed no shard blocks nothing: the next run clears it.
* One job per output at a time (:mod:`ipmix_cli.fs.lock`).

Every check that does not change the output is a method here that ``--dry-run`` runs as the
real run does (``check_*``); :meth:`AugmentOutput.claim` repeats them under the lock, then acts.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ipmix_cli.errors import AugmentError, OutputError, ShardError
from ipmix_cli.fs.atomic import is_temporary_name, write_bytes_atomic
from ipmix_cli.fs.lock import exclusive_lock
from ipmix_cli.fs.probe import lies_within, lock_holder, path_problem, real_path, write_target
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
from ipmix_cli.shards.attrs import decode_attr
from ipmix_cli.shards.layout import (
    ENTRY_KIND,
    LOCK_FILE,
    SHARD_NAME,
    SUBFOLDER_NAME,
    shard_files_in,
    shard_relpath,
)

if TYPE_CHECKING:
    from ipmix_cli.jobs.augment_spec import AugmentSpec

WORK_DIR = ".work"
JOB_FILE = "job.json"
MIXING_FILE = "mixing-set.npz"
SOURCE_FILE = "source.pkl"
FINISHED_ENTRY_FILE = "finished-entry.h5"  # an s3:// output's entry, fetched to compare
WORK_FILES = frozenset({JOB_FILE, MIXING_FILE, SOURCE_FILE, FINISHED_ENTRY_FILE})
"""Every file a job writes in its work folder (besides temporaries of atomic writes)."""

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
        no name too long and no symbolic link loop on the way (``pathlib`` would raise a
        traceback on either), an entry file name rather than a folder, a shard folder that is a
        real folder (not a file, not a link to someone's folder) of this entry's own, and a
        place this process may create them in."""
        for path in (self.entry, self.folder):
            try:
                os.fsencode(path).decode("utf-8")
            except UnicodeDecodeError:
                raise OutputError(
                    path, "name is not valid UTF-8; HDF5 cannot record it, choose another --out"
                ) from None
            problem = path_problem(path)
            if problem is not None:
                raise OutputError(path, f"{problem}; choose another --out")
        if self.entry == self.folder:
            raise OutputError(
                self.entry, "names its own shard folder; --out names the entry file, e.g. data.h5"
            )
        if self.entry.is_dir():
            raise OutputError(self.entry, "is a folder; --out names the entry file, e.g. data.h5")
        if self.folder.is_symlink():
            raise OutputError(
                self.folder,
                "is a symbolic link; ipmix writes its shards and lock in a folder of its own: "
                "remove the link or choose another --out",
            )
        if self.folder.exists() and not self.folder.is_dir():
            raise OutputError(self.folder, "exists and is not a folder; move it away")
        self.check_owner()
        parent = nearest_existing(self.entry.parent)
        if not parent.is_dir():
            raise OutputError(self.entry, f"cannot write here ({parent} is not a folder)")
        probe = self.folder if self.folder.is_dir() else parent
        if not os.access(probe, os.W_OK | os.X_OK):
            raise OutputError(self.entry, f"cannot write here ({probe} is not writable)")

    def check_owner(self) -> None:
        """The shard folder is this entry's alone. It is named after the entry's stem, so
        ``c.h5``, ``c.hdf5`` and ``c`` all name ``c.shards``: writing (or, with --overwrite,
        clearing) it for one would change the rows another existing entry reads. Refused even
        with --overwrite, since that entry is not what --out names."""
        others = self._entries_sharing_folder()
        if others:
            raise OutputError(self.folder, f"belongs to {others[0]}; choose another --out name")

    def _entries_sharing_folder(self) -> list[Path]:
        """The other ipmix entry files beside this one whose shard folder is this one's."""
        parent, stem = self.entry.parent, self.entry.stem
        try:
            with os.scandir(parent) as items:
                names = sorted(i.name for i in items if i.name.startswith(stem))
        except OSError:  # no folder yet (nothing shares it), or unreadable (checked later)
            return []
        return [
            parent / name
            for name in names
            if name != self.entry.name
            and shard_dir(parent / name) == self.folder
            and _is_entry_file(parent / name)
        ]

    def check_apart_from(self, inputs: Iterable[Path | None]) -> None:
        """Nothing this output writes or removes is an input, holds one or lies inside one;
        ``inputs`` are every path the job reads, given or implied (None: none).

        An input inside the output (or the output being an input) is refused. Inside an input
        folder the output may go (the folder's scan skips an ipmix output named ``NAME.h5``, so
        only such a name), but only where nothing of that folder is yet: an existing file or
        folder there that is not this output's own is part of the input, and an input is never
        replaced or removed, even with --overwrite. Paths are compared as reads and writes reach
        them (links followed)."""
        mine = [(own, write_target(own)) for own in (self.entry, self.folder)]
        for given in inputs:
            if given is None:
                continue
            path = Path(given).absolute()
            read_at, named_at = real_path(path), write_target(path)
            for _, target in mine:
                if lies_within(read_at, target) or lies_within(named_at, target):
                    raise OutputError(
                        self.entry,
                        f"the input {given} is part of this output; choose another --out",
                    )
            if not os.path.isdir(read_at):
                continue
            for own, target in mine:
                if lies_within(target, read_at) and os.path.lexists(own) and not self._is_own(own):
                    raise OutputError(
                        own,
                        f"is part of the input {given}; an input is never replaced or removed, "
                        "even with --overwrite: choose another --out",
                    )
            if lies_within(mine[0][1], read_at) and not self.entry.name.endswith(".h5"):
                raise OutputError(
                    self.entry,
                    f"lies inside the input {given}, whose scan leaves out an output only when "
                    "it is named NAME.h5; choose another --out",
                )

    def _is_own(self, path: Path) -> bool:
        """Whether ``path`` (the entry file or the shard folder, existing) is an ipmix output's
        rather than a file or folder of the user's: an entry file, or a real folder holding
        nothing but what ipmix writes there."""
        if path == self.entry:
            return _is_entry_file(path)
        return path.is_dir() and not path.is_symlink() and not self.foreign_files()

    def foreign_files(self) -> list[Path]:
        """What the shard folder holds that no ipmix run writes there: anything but finished
        shards (numbered subfolders of them included), the lock, the work folder's files and
        temporaries of atomic writes; a symbolic link, whatever its name. Looks one level into
        the work and numbered folders only: a foreign folder counts as one entry."""
        if self.folder.is_symlink() or not self.folder.is_dir():
            return []
        found = []
        for item in _listing(self.folder):
            path = self.folder / item.name
            if item.is_dir(follow_symlinks=False) and item.name == WORK_DIR:
                found += _unexpected(path, lambda name: name in WORK_FILES)
            elif item.is_dir(follow_symlinks=False) and SUBFOLDER_NAME.match(item.name):
                found += _unexpected(path, lambda name: bool(SHARD_NAME.match(name)))
            elif not (item.is_file(follow_symlinks=False) and _ours_at_top(item.name)):
                found.append(path)
        return found

    def check_contents(self, overwrite: bool) -> None:
        """Without --overwrite, the shard folder holds nothing the user put there: a run would
        otherwise clear it (a failed earlier attempt) or keep it in the output."""
        if overwrite:
            return
        foreign = self.foreign_files()
        if foreign:
            shown = ", ".join(str(p.relative_to(self.folder)) for p in foreign[:3])
            if len(foreign) > 3:
                shown += f" and {len(foreign) - 3} more"
            raise OutputError(
                self.folder,
                f"holds files ipmix did not write ({shown}); move them away, or pass "
                "--overwrite to remove them",
            )

    def check_unlocked(self) -> None:
        """No other run holds the output's lock (asked without taking it, so a dry run refuses
        as the real run would, writing nothing). Not for a caller that holds it itself."""
        owner = lock_holder(self.folder / LOCK_FILE)
        if owner is not None:
            raise OutputError(
                self.entry,
                f"another ipmix run (pid {owner}) is writing this output; wait for it to "
                "finish or stop it",
            )

    def check_state(self, overwrite: bool, resume: bool) -> State:
        """What is there may be used as asked, as far as that is known before the input is
        read (a finished or interrupted output needs --resume or --overwrite, a folder with
        the user's files --overwrite); returns the state. Changes nothing."""
        self.check_contents(overwrite)
        state = self.state()
        if overwrite:
            return state
        if state is State.FINISHED and not resume:
            raise OutputError(self.entry, "output exists; pass --overwrite to replace it")
        if state is State.UNFINISHED and not resume:
            raise OutputError(
                self.entry,
                f"an interrupted run left {len(self.finished_shards())} finished shards "
                "here; pass --resume to continue it or --overwrite to start again",
            )
        return state

    def check_claim(
        self, identity: dict[str, Any], job_hash: str, overwrite: bool, resume: bool
    ) -> State:
        """Every check :meth:`claim` makes for the job ``identity``, changing nothing, so that
        ``--dry-run`` refuses what the run would (a resume of another job included); returns
        the state."""
        state = self.check_state(overwrite, resume)
        if overwrite:
            return state
        if state is State.FINISHED:
            manifest = self._finished_manifest()
            if manifest.job != job_hash:  # the hash decides; the fields only name what differs
                previous = self._identity_of(manifest)
                self._same_job(previous, identity, "the finished output", known=True)
        elif state is State.UNFINISHED:
            previous = self._recorded_identity()
            if previous is not None:
                self._same_job(previous, identity, "the interrupted run")
            elif self.shard_jobs() - {job_hash}:
                raise AugmentError(
                    self.entry,
                    "cannot resume: the finished shards here were made by another job (other "
                    "inputs or options); pass --overwrite to start again",
                )
        return state

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
        may be reused. Refuses (one line, :meth:`check_claim`) whatever would replace a user's
        output without ``--overwrite`` or mix shards of two different jobs."""
        state = self.check_claim(identity, job_hash, overwrite, resume)
        if overwrite:
            self.clear()
            return False
        if state in (State.FINISHED, State.UNFINISHED):
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
        if self.entry.exists() or self.finished_shards():
            return
        try:
            foreign = self.foreign_files()
        except OutputError:  # unreadable now: leave it rather than hide the job's own error
            return
        if not foreign:  # files someone put there meanwhile keep it all
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


def _listing(folder: Path) -> list[os.DirEntry[str]]:
    """The entries of ``folder``; unreadable is one line naming it."""
    try:
        with os.scandir(folder) as items:
            return sorted(items, key=lambda item: item.name)
    except OSError as error:
        raise OutputError(folder, f"cannot read ({error.strerror or error})") from None


def _unexpected(folder: Path, expected: Callable[[str], bool]) -> list[Path]:
    """The entries of ``folder`` that are not regular files with an ``expected`` name or a
    temporary name of ours."""
    return [
        folder / item.name
        for item in _listing(folder)
        if not (
            item.is_file(follow_symlinks=False)
            and (expected(item.name) or is_temporary_name(item.name))
        )
    ]


def _ours_at_top(name: str) -> bool:
    """Whether a plain file of this name at the top of a shard folder is one ipmix writes."""
    return name == LOCK_FILE or bool(SHARD_NAME.match(name)) or is_temporary_name(name)


def _is_entry_file(path: Path) -> bool:
    """Whether ``path`` is an ipmix entry file (HDF5 with ``kind = ipmix-entry``): the one kind
    of file that owns a shard folder. Anything unreadable is not one."""
    if not os.path.isfile(path):
        return False
    try:
        import h5py

        with h5py.File(path, "r") as handle:
            kind = decode_attr(handle.attrs.get("kind"))
    except Exception:  # any file that h5py cannot open (or whose kind is not text) is not one
        return False
    return kind == ENTRY_KIND
