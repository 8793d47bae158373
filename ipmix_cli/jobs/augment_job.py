"""The job behind ``ipmix augment``: plan shards, augment them in workers, join them.

A shard is a fixed range of copy-major rows (``ipmix_cli.shards.layout``); the worker that
computes it writes it atomically, so a killed run loses at most the shards in flight, and
``resume`` recomputes exactly the missing or invalid ones. Every sample's bytes depend only on
(seed, source, copy, view), so the result is the same for any number of workers and after any
number of resumes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import pickle
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ipmix_cli.augment.config import IPMixConfig
from ipmix_cli.augment.engine import warmup
from ipmix_cli.augment.mixing_set import MixingSet
from ipmix_cli.cores import resolve_jobs
from ipmix_cli.errors import AugmentError, DecodeError, DiskFullError, OutputError, SourceError
from ipmix_cli.fs.atomic import (
    atomic_path,
    deferred_writes,
    remove_stale_temporaries,
    write_bytes_atomic,
    write_error,
)
from ipmix_cli.fs.probe import path_problem
from ipmix_cli.jobs.augment_output import MIXING_FILE, SOURCE_FILE, AugmentOutput, State
from ipmix_cli.jobs.augment_spec import AugmentSpec, AugmentSummary
from ipmix_cli.jobs.augment_tasks import ShardTask, commit_all, compute_shards, handed_mixing
from ipmix_cli.jobs.estimate import estimate_output
from ipmix_cli.jobs.input_watch import InputWatch
from ipmix_cli.jobs.mixing_prep import PreparedMixing, prepare_mixing
from ipmix_cli.jobs.parallel import run_unordered
from ipmix_cli.jobs.remote_bank import fetch_bank
from ipmix_cli.jobs.remote_output import RemoteAugmentOutput, output_for
from ipmix_cli.remote.url import ObjectURL
from ipmix_cli.shards import shard_dir, shard_filename
from ipmix_cli.shards.layout import shard_subfolders
from ipmix_cli.sources import Source, open_source
from ipmix_cli.sources.base import Progress
from ipmix_cli.sources.class_map import read_class_map
from ipmix_cli.sources.detect import HDF5_SUFFIXES, detect_format
from ipmix_cli.sources.folder import FolderSource
from ipmix_cli.sources.mixing_pictures import mixing_files
from ipmix_cli.versions import byte_versions

MAX_MIXING_BYTES = 8 << 30  # the prepared mixing set, in memory in every worker process


def _start_warmup(config: IPMixConfig) -> threading.Thread:
    """Load the kernels from numba's cache on a thread while the inputs are opened and hashed:
    numba's first dispatch in a process takes ~0.8 s, and the hashing and decoding release the
    GIL for much of that time. Errors are left for the real call to raise. Not a daemon: a
    thread still inside numba when the interpreter shuts down (an early Ctrl-C) can crash it."""

    def load() -> None:
        with contextlib.suppress(Exception):
            warmup(config)

    thread = threading.Thread(target=load, name="ipmix-warmup")
    thread.start()
    return thread


def _fingerprint_mixing(prepared: PreparedMixing, path: Path | ObjectURL) -> dict[str, Any]:
    return {"path": str(path), "count": prepared.count, "sha256": prepared.pixels_sha256}


def _identity(spec: AugmentSpec, source: Source, mixing_print: dict[str, Any]) -> dict[str, Any]:
    """What a resumed run must share with the interrupted one for its shards to be reusable."""
    return {
        "environment": byte_versions(),
        "config": spec.config.to_dict(),
        "seed": spec.seed,
        "copies": spec.copies,
        "rows_per_shard": spec.rows_per_shard(len(source)),
        "compression": spec.compression,
        "codec": spec.codec,
        "quality": spec.quality if spec.codec == "jpeg" else None,
        "clean": spec.clean,
        "source": source.fingerprint(),
        "source_count": len(source),
        "mixing_set": mixing_print,
    }


def _remove_temporaries(folder: Path) -> None:
    """Temporary files a killed run left in the shard folder and its subfolders."""
    for place in (folder, *shard_subfolders(folder)):
        remove_stale_temporaries(place)


def plan_shards(n_sources: int, copies: int, rows_per_shard: int) -> list[tuple[int, int]]:
    """Row ranges of the shards, in index order: each copy's block of ``n_sources`` rows cut
    at the same source offsets, so that shard ``c * per_copy + j`` holds copy ``c`` of the
    sources of shard ``j`` (one task then decodes those images once for every copy)."""
    return [
        (c * n_sources + a, c * n_sources + min(a + rows_per_shard, n_sources))
        for c in range(copies)
        for a in range(0, n_sources, rows_per_shard)
    ]


def open_inputs(
    spec: AugmentSpec,
    jobs: int = 1,
    progress: Progress | None = None,
    exclude: Mapping[str, str] | None = None,
) -> tuple[Source, PreparedMixing | None]:
    """Open and check the data set, then load the mixing set prepared for the output size
    (errors name the file); a folder's scan runs on ``jobs`` workers and reports to
    ``progress``. The clean export has no mixing set."""
    source = open_source(
        spec.input,
        spec.input_format,
        spec.on_error,
        split=spec.split,
        labels_path=spec.labels_path,
        fingerprint=spec.fingerprint,
        n_jobs=jobs,
        progress=progress,
        exclude=exclude,
        class_map=None if spec.classes is None else read_class_map(spec.classes),
    )
    if len(source) == 0:
        raise AugmentError(f"{spec.input}: no readable images")
    mixing_path = spec.mixing_set
    if isinstance(mixing_path, ObjectURL):  # a bank in a bucket: fetched once, then local
        mixing_path = fetch_bank(mixing_path)
    if spec.clean:
        return source, None
    return source, prepare_mixing(
        mixing_path, spec.config, functools.partial(_check_mixing_memory, spec)
    )


@dataclass
class AugmentPlan:
    """Everything the job knows once its checks have passed, before it writes anything."""

    spec: AugmentSpec
    source: Source
    mixing: MixingSet | None  # prepared for the output size; None for the clean export
    mixing_print: dict[str, Any]
    identity: dict[str, Any]
    job_hash: str

    @property
    def rows(self) -> int:
        return len(self.source) * self.spec.copies

    @property
    def rows_per_shard(self) -> int:
        return self.spec.rows_per_shard(len(self.source))

    @property
    def num_shards(self) -> int:
        return self.spec.num_shards(len(self.source))


def preflight(
    spec: AugmentSpec,
    jobs: int = 1,
    progress: Progress | None = None,
    exclude: Mapping[str, str] | None = None,
    *,
    overwrite: bool = False,
    resume: bool = False,
    locked: bool = False,
) -> AugmentPlan:
    """Every check the job can make before it starts, in the order of their cost; ``--dry-run``
    runs exactly this with the run's ``overwrite`` and ``resume``, so it refuses whatever the
    run would (an existing output, a resume of another job, a folder of the user's files, a
    held lock). Nothing is written. ``locked``: the caller already holds the output's lock (a
    rerun inside the job), which is then not probed."""
    check_run_flags(spec, overwrite, resume)
    spec.validate()
    check_input_names(_given_inputs(spec))
    output = output_for(spec.out)
    with _naming_out(output, spec.out):
        output.check_names()
        output.check_apart_from(input_paths(spec))
        if not locked:
            output.check_unlocked()
        output.check_state(overwrite, resume)
    source, prepared = open_inputs(spec, jobs=jobs, progress=progress, exclude=exclude)
    spec.validate_size(len(source))
    config = spec.config
    if not config.accepts_any_size and not spec.clean:
        other = source.image_of_other_size(config.size)
        if other is not None:
            path, (h, w) = other
            raise AugmentError(
                path,
                f"image is {h}x{w}, but the {config.pre} pre-transform takes "
                f"{config.size[0]}x{config.size[1]} images only with --resize exact; "
                "--resize center (the default) takes any size",
            )
    if prepared is None:
        plan = _plan(spec, source, None, {})
    else:
        plan = _plan(spec, source, prepared.mixing, _fingerprint_mixing(prepared, spec.mixing_set))
    with _naming_out(output, spec.out):
        output.check_claim(plan.identity, plan.job_hash, overwrite, resume)
    return plan


def check_run_flags(spec: AugmentSpec, overwrite: bool, resume: bool) -> None:
    """--overwrite and --resume contradict each other: refused before anything else."""
    if overwrite and resume:
        raise AugmentError(f"{spec.out}: choose one of --overwrite and --resume")


def _local_mixing(spec: AugmentSpec) -> Path | None:
    """The mixing set when it is read from this machine (none for --clean or a bucket's)."""
    return None if spec.clean or isinstance(spec.mixing_set, ObjectURL) else spec.mixing_set


def _given_inputs(spec: AugmentSpec) -> list[Path | None]:
    """The local input paths given on the command line (None where an option is not)."""
    return [spec.input, _local_mixing(spec), spec.labels_path, spec.classes]


def check_input_names(paths: Iterable[Path | None]) -> None:
    """Each input path given can be looked at: a name too long or a symbolic link loop is one
    line naming it here, before any code that would meet it as a traceback (``pathlib``
    raises on both)."""
    for path in paths:
        if path is None:
            continue
        problem = path_problem(path)
        if problem is not None:
            raise SourceError(Path(path).absolute(), problem)


def input_paths(spec: AugmentSpec) -> list[Path]:
    """Every local path the job reads, given or implied, for the output to keep apart from:
    the data set, the mixing set (not a bucket's), ``--labels``, ``--classes``, and what a
    source reads beside its file: ``X_labels.npy`` (unless ``--labels``) and
    ``X_class_names.txt`` of an ``.npy`` input, an HDF5 input's shard folder (an ipmix output
    read as input reads its shards), and a mixing folder's HDF5 bank with its shard folder."""
    paths = [Path(path).absolute() for path in _given_inputs(spec) if path is not None]
    local_mixing = _local_mixing(spec)
    implied = []
    source = Path(spec.input).absolute()
    if os.path.isfile(source):
        try:
            fmt = spec.input_format or detect_format(source)
        except SourceError:
            fmt = None  # not a data set at all: opening it says so
        if fmt == "npy":
            if spec.labels_path is None:
                implied.append(source.with_name(source.stem + "_labels.npy"))
            implied.append(source.with_name(source.stem + "_class_names.txt"))
        elif fmt == "hdf5":
            implied.append(shard_dir(source))
    if local_mixing is not None:
        try:
            files = mixing_files(local_mixing)
        except SourceError:
            files = []  # missing or empty: loading it says so
        if len(files) == 1 and files[0].suffix.lower() in HDF5_SUFFIXES:
            implied += [files[0], shard_dir(files[0])]
    # A sibling whose name is too long cannot exist, so nothing can overwrite it.
    return paths + [path for path in implied if path_problem(path) is None]


@contextlib.contextmanager
def _naming_out(output: AugmentOutput, out: Path | ObjectURL) -> Iterator[None]:
    """Errors about an ``s3://`` output's local staging entry name the URL the user gave."""
    try:
        yield
    except (OutputError, AugmentError) as error:
        if isinstance(output, RemoteAugmentOutput) and error.path == str(output.entry):
            raise type(error)(str(out), error.problem) from None
        raise


def _plan(
    spec: AugmentSpec, source: Source, mixing: MixingSet | None, mixing_print: dict[str, Any]
) -> AugmentPlan:
    identity = _identity(spec, source, mixing_print)
    job_hash = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return AugmentPlan(spec, source, mixing, mixing_print, identity, job_hash)


def _check_mixing_memory(spec: AugmentSpec, count: int, need: int) -> None:
    """The mixing set is prepared for the output size once, in memory: refuse one that would
    not fit before resizing anything (``need``: its bytes prepared)."""
    config = spec.config
    if need > MAX_MIXING_BYTES:
        raise AugmentError(
            spec.mixing_set,
            f"{count} mixing pictures prepared for {config.size[0]}x{config.size[1]} "
            f"would take {need / 1e9:.1f} GB of memory (at most {MAX_MIXING_BYTES / 1e9:.0f} "
            "GB); use fewer pictures or a smaller --size",
        )


def run_augment(
    spec: AugmentSpec,
    jobs: int = -1,
    overwrite: bool = False,
    resume: bool = False,
    on_start: Callable[[int, int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    backend: str = "threads",
    scan: Progress | None = None,
    space_check: bool = True,
) -> AugmentSummary:
    """Augment ``spec.input`` into shards + entry file at ``spec.out``.

    ``scan`` shows the input scan's progress; ``on_start(total_images, already_done)`` is
    called once the plan is known, then ``on_progress(n)`` after each finished shard, so a
    caller can drive progress bars. ``space_check``: refuse to start when the estimated output
    does not fit in the free space.

    A folder image whose header passed the scan but that turns out broken when a worker
    decodes it follows ``--on-error``: ``fail`` stops the job naming it (finished shards are
    kept); ``skip`` checks every image fully (the only case where images are decoded twice),
    then runs the job again without the broken ones, since the row layout depends on the
    number of images.
    """
    check_run_flags(spec, overwrite, resume)  # before the warm-up thread: an instant refusal
    started = time.perf_counter()
    in_process = backend == "threads" or (backend == "loky" and resolve_jobs(jobs) == 1)
    warm = in_process and not spec.clean
    # A folder's scan forks workers: the warm-up thread (inside numba) starts after it.
    # os.path.isdir, not Path.is_dir: a name too long must reach preflight's one-line refusal.
    folder = os.path.isdir(spec.input) and spec.input_format in (None, "folder")
    warming = _start_warmup(spec.config) if warm and not folder else None
    try:
        plan = preflight(spec, jobs=jobs, progress=scan, overwrite=overwrite, resume=resume)
        if warm and folder:
            warming = _start_warmup(spec.config)
        output = output_for(spec.out)
        with output.lock():
            run = functools.partial(
                _run,
                output=output,
                jobs=jobs,
                on_start=on_start,
                on_progress=on_progress,
                backend=backend,
                space_check=space_check,
            )
            summary = _attempt(plan, output, run, overwrite, resume, jobs, scan)
    finally:
        if warming is not None:
            warming.join()
    summary.seconds = time.perf_counter() - started
    return summary


def _attempt(
    plan: AugmentPlan,
    output: AugmentOutput,
    run: Callable[..., AugmentSummary],
    overwrite: bool,
    resume: bool,
    jobs: int,
    scan: Progress | None,
) -> AugmentSummary:
    """``run(plan, overwrite=, resume=)`` (:func:`_run` with the rest bound), and what a
    failure then means for the output and the user (see :func:`run_augment`)."""
    spec = plan.spec
    fresh = overwrite or output.state() in (State.ABSENT, State.STALE)
    try:
        return run(plan, overwrite=overwrite, resume=resume)
    except DecodeError as error:
        if spec.on_error != "skip" or not isinstance(plan.source, FolderSource):
            output.discard_attempt()
            raise DecodeError(
                f"{error} (its header passed the scan); fix or remove the file and rerun with "
                "--overwrite, or leave broken files out with --on-error skip"
            ) from None
        if not fresh:
            raise DecodeError(
                f"{error}; with --on-error skip the job must start again without it, which "
                "replaces the shards here: rerun with --overwrite"
            ) from None
    except BaseException as error:
        output.discard_attempt()
        if isinstance(error, DiskFullError):
            raise DiskFullError(
                f"{error}; finished shards are kept; free space and rerun with --resume"
            ) from None
        raise
    broken = plan.source.undecodable(jobs, progress=scan)
    plan = preflight(
        spec, jobs=jobs, progress=scan, exclude=dict(broken), overwrite=True, locked=True
    )
    try:
        return run(plan, overwrite=True, resume=False)
    except BaseException:
        output.discard_attempt()
        raise


def _run(
    plan: AugmentPlan,
    *,
    output: AugmentOutput | RemoteAugmentOutput,
    jobs: int,
    overwrite: bool,
    resume: bool,
    on_start: Callable[[int, int], None] | None,
    on_progress: Callable[[int], None] | None,
    backend: str,
    space_check: bool = True,
) -> AugmentSummary:
    spec, source, job_hash = plan.spec, plan.source, plan.job_hash
    reuse = output.claim(plan.identity, job_hash, overwrite=overwrite, resume=resume)
    folder = output.folder
    if reuse:  # nothing else writes here (we hold the lock): drop what a killed run left
        _remove_temporaries(folder)
        remove_stale_temporaries(output.work)
    try:
        output.work.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise write_error(output.work, error) from None
    output.record_job(json.dumps(plan.identity, sort_keys=True).encode())
    n_sources = len(source)
    ranges = plan_shards(n_sources, spec.copies, plan.rows_per_shard)
    num_shards = len(ranges)
    per_copy = num_shards // spec.copies
    parent_pid = os.getpid() if backend == "loky" else None
    infos = output.existing_shards(ranges, num_shards, job_hash) if reuse else {}
    todo: dict[int, list[tuple[int, int, int]]] = {}  # source range -> its shards to make
    for index, (start, stop) in enumerate(ranges):
        if index not in infos:
            todo.setdefault(index % per_copy, []).append((index, start, stop))
    # Where every task runs in this process (run_unordered's rule), the mixing set is handed
    # over as it is, not written to a work file and read back (augment_tasks.handed_mixing).
    serial = backend != "dask" and (resolve_jobs(jobs) == 1 or len(todo) <= 1)
    in_process = serial or backend == "threads"
    mixing = plan.mixing
    mixing_file = output.work / MIXING_FILE
    if mixing is not None and not in_process:
        try:
            with atomic_path(mixing_file) as tmp, open(tmp, "wb") as handle:
                np.savez(handle, pictures=mixing.pictures, shapes=mixing.shapes)
        except OSError as error:
            raise write_error(mixing_file, error) from None
    source_file = output.work / SOURCE_FILE
    write_bytes_atomic(source_file, pickle.dumps(source, protocol=pickle.HIGHEST_PROTOCOL))
    # Remote workers (dask on other hosts) fetch the work files from the bucket.
    source_ref, mixing_ref = output.work_refs(source_file, mixing_file, backend)

    work_spec = output.worker_spec(spec)
    tasks = [
        ShardTask(
            tuple(shards),
            n_sources,
            source_ref,
            mixing_ref,
            work_spec,
            job_hash,
            parent_pid,
            num_shards,
            stage_on_worker=backend == "dask" and isinstance(output, RemoteAugmentOutput),
        )
        for _, shards in sorted(todo.items())
    ]
    output.remove_unwanted({shard_filename(i, num_shards) for i in range(num_shards)})
    if space_check:
        missing = [shard for task in tasks for shard in task.shards]
        rows = sum(stop - start for _, start, stop in missing)
        need = estimate_output(spec, source, mixing, rows, len(missing), timed=False).bytes
        output.check_space(need, len(missing), resolve_jobs(jobs))
    infos_reused = set(infos)
    reused_rows = sum(info.count for info in infos.values())
    if on_start:
        on_start(plan.rows, reused_rows)
    watch = InputWatch(source)  # every input file's status, compared before the entry
    results = run_unordered(compute_shards, tasks, jobs=jobs, backend=backend)
    # Tasks that run one after another in this process leave their shards' writes to the
    # commit thread, which then writes while the next task computes (fs.atomic.deferred_writes).
    local = not isinstance(output, RemoteAugmentOutput)
    try:
        with contextlib.ExitStack() as stack:
            if in_process and mixing is not None:
                stack.enter_context(handed_mixing(mixing_ref, job_hash, mixing))
            if serial and local:
                stack.enter_context(deferred_writes())
            for info in commit_all(results, on_progress):
                infos[info.index] = info
    except BaseException:
        results.close()  # stop the workers (threads finish the shard they are on first)
        if backend != "dask":  # nothing of ours writes here any more: drop what was half-done
            _remove_temporaries(folder)
        raise
    # A worker killed mid-write (its task then reran elsewhere) leaves its temporary file; every
    # task has finished now, so nothing is writing here any more.
    _remove_temporaries(folder)
    watch.check()

    about = {
        "environment": byte_versions(),
        "config": spec.config.to_dict(),
        "seed": spec.seed,
        "copies": spec.copies,
        "num_sources": n_sources,
        "rows_per_shard": plan.rows_per_shard,
        "compression": spec.compression,
        "codec": spec.codec,
        "quality": spec.quality if spec.codec == "jpeg" else None,
        "clean": spec.clean,
        "source": {**source.to_dict(), "fingerprint": source.fingerprint()},
        "mixing_set": plan.mixing_print,
        "skipped": [list(item) for item in source.skipped],
        "class_labels": source.class_labels,
        "job": job_hash,
    }
    size = output.publish([infos[i] for i in range(len(ranges))], about, source.class_names)
    return AugmentSummary(
        out=spec.out,
        images=plan.rows,
        shards=len(ranges),
        computed_shards=len(ranges) - len(infos_reused),
        reused_shards=len(infos_reused),
        bytes=size,
        seconds=0.0,
        skipped=[(str(a), str(b)) for a, b in source.skipped],
    )
