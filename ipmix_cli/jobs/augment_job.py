"""The job behind ``ipmix augment``: plan shards, augment them in workers, join them.

Rows are laid out copy-major (row = copy * N + source) so that copy c of every source is one
contiguous block: a reader serving epoch e reads block e mod copies sequentially. A shard is a
fixed range of rows; the worker that computes it writes it atomically, so a killed run loses at
most the shards in flight, and ``resume`` recomputes exactly the missing or invalid ones. Every
sample's bytes depend only on (seed, source, copy, view), so the result is the same for any
number of workers and after any number of resumes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import pickle
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ipmix_cli.atomic import atomic_path, remove_stale_temporaries, write_bytes_atomic
from ipmix_cli.augment.config import IPMixConfig
from ipmix_cli.augment.engine import augment_batch, augment_images, warmup
from ipmix_cli.augment.mixing_set import MixingSet
from ipmix_cli.errors import IpmixError
from ipmix_cli.parallel import resolve_jobs, run_unordered
from ipmix_cli.shards import (
    PendingShard,
    ShardInfo,
    read_shard_info,
    shard_dir,
    shard_filename,
    shard_is_valid,
    write_entry,
    write_shard_pending,
)
from ipmix_cli.sources import Source, open_mixing_set, open_source

JOB_FILE = "job.json"
MIXING_FILE = "mixing-set.npz"
SOURCE_FILE = "source.pkl"
WORK_DIR = ".work"
SHARD_TARGET_BYTES = 16 * 1024 * 1024
_WORKER_LOADS = threading.Lock()


class AugmentError(IpmixError):
    """The augment job cannot run as asked."""


@dataclass(frozen=True)
class AugmentSpec:
    """Everything that determines the output bytes (worker count deliberately excluded)."""

    input: Path
    mixing_set: Path
    out: Path
    config: IPMixConfig
    copies: int = 1
    seed: int = 0
    shard_size: int | None = None
    compression: str = "none"
    input_format: str | None = None
    on_error: str = "fail"
    split: str = "train"
    labels_path: Path | None = None

    def rows_per_shard(self) -> int:
        """Explicit ``shard_size``, else about 16 MiB of images per shard (64 to 16384 rows):
        small enough that a CIFAR-sized job splits into many shards for load balance and cheap
        resume, large enough that per-shard overhead (open, checksum, fsync) stays negligible."""
        if self.shard_size is not None:
            return self.shard_size
        h, w = self.config.size
        per_row = h * w * 3 * self.config.n_views
        return int(max(64, min(16384, SHARD_TARGET_BYTES // per_row)))


@dataclass
class AugmentSummary:
    out: Path
    images: int
    shards: int
    computed_shards: int
    reused_shards: int
    bytes: int
    seconds: float
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Images computed per second in this run (reused shards excluded)."""
        computed = self.images * self.computed_shards / max(self.shards, 1)
        return computed / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        skipped = f", {len(self.skipped)} unreadable files skipped" if self.skipped else ""
        reused = f", {self.reused_shards} reused" if self.reused_shards else ""
        return (
            f"{self.images} images in {self.shards} shards ({self.bytes / 1e6:.1f} MB){reused}"
            f" in {self.seconds:.1f} s, {self.rate:.0f} images/s{skipped} -> {self.out}"
        )


@dataclass(frozen=True)
class _ShardTask:
    """One shard's work, a few hundred bytes to pickle: the source and the mixing set travel as
    files in the job's work folder (a source's file list and labels grow with the data set, ~50
    MB for ImageNet, too much to ship with each of its ~10^4 shard tasks)."""

    index: int
    start: int
    stop: int
    n_sources: int
    source_file: Path
    mixing_file: Path
    spec: AugmentSpec
    job_hash: str


@lru_cache(maxsize=2)
def _load_mixing(path: Path, config_json: str, job_hash: str) -> MixingSet:
    """Each worker process loads the prepared mixing set once, not once per shard. The job hash
    is part of the key because dask workers outlive jobs: a later job writing the same path
    with another mixing set must not get this one."""
    config = IPMixConfig.from_dict(json.loads(config_json))
    with np.load(path) as data:
        return MixingSet(data["pictures"], data["shapes"], config.size, config.mixing_side)


@lru_cache(maxsize=1)
def _load_source(path: Path, job_hash: str) -> Source:
    """Each worker process unpickles the source once (it reopens its files lazily); keyed by
    job hash like :func:`_load_mixing`. The file is the job's own, written by the parent. One
    entry only: a source caches what it reads (a whole .npz, say), and a long-lived worker
    should not keep the previous job's copy."""
    with open(path, "rb") as handle:
        return pickle.load(handle)


def _augment_rows(task: _ShardTask, source: Source, mixing: MixingSet) -> dict[str, np.ndarray]:
    spec, config = task.spec, task.spec.config
    rows = np.arange(task.start, task.stop, dtype=np.int64)
    copies, sources = np.divmod(rows, task.n_sources)
    labels = np.asarray(source.labels, dtype=np.int64)[sources]
    images = source.read_batch(sources)
    if config.pre == "imagenet":
        out = augment_images(list(images), sources, copies, mixing, config, spec.seed)
    else:
        if isinstance(images, np.ndarray):
            shapes = {images.shape[1:]}
        else:
            shapes = {tuple(np.shape(image)) for image in images}
        expected = (*config.size, 3)
        if shapes != {expected}:
            bad = next(s for s in shapes if s != expected)
            raise AugmentError(
                f"{spec.input}: image of shape {bad[0]}x{bad[1]} but --pre {config.pre} needs "
                f"{expected[0]}x{expected[1]} inputs; use --size, or --pre imagenet to crop"
            )
        out = augment_batch(np.asarray(images), sources, copies, mixing, config, spec.seed)
    arrays = {"labels": labels, "source_index": sources, "copy_index": copies}
    if config.jsd:
        arrays.update(clean=out[:, 0], images=out[:, 1], images2=out[:, 2])
    else:
        arrays["images"] = out
    return arrays


def _compute_shard(task: _ShardTask) -> PendingShard:
    """Worker side: augment one shard's rows and write the shard under a temporary name; the
    parent commits it (:func:`_commit_all`)."""
    config_json = json.dumps(task.spec.config.to_dict(), sort_keys=True)
    with _WORKER_LOADS:  # the threads backend: one load per process, not one per thread
        mixing = _load_mixing(task.mixing_file, config_json, task.job_hash)
        source = _load_source(task.source_file, task.job_hash)
    arrays = _augment_rows(task, source, mixing)
    path = shard_dir(task.spec.out) / shard_filename(task.index)
    return write_shard_pending(
        path,
        arrays,
        attrs={"job": task.job_hash},
        index=task.index,
        compression=task.spec.compression,
    )


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


def _commit_all(
    pending: Iterator[PendingShard], on_progress: Callable[[int], None] | None
) -> list[ShardInfo]:
    """Commit each shard a worker hands back (fsync, rename) on a thread of this process, so
    that the workers compute while the disk catches up; return their infos once all are
    durable.

    Progress counts computed shards. If anything fails or the run is interrupted, commits not
    yet started are dropped with their temporary files: a shard exists under its final name
    only once it is complete and on disk.
    """
    commits: list[tuple[Future[ShardInfo], PendingShard]] = []
    with ThreadPoolExecutor(1, thread_name_prefix="ipmix-commit") as committer:
        try:
            for shard in pending:
                commits.append((committer.submit(shard.commit), shard))
                if on_progress:
                    on_progress(shard.info.count)
            return [future.result() for future, _ in commits]
        except BaseException:
            for future, shard in commits:
                if future.cancel():
                    shard.discard()
            raise


def _fingerprint_mixing(pictures: list[np.ndarray], path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    for picture in pictures:
        digest.update(f"{picture.shape}".encode())
        digest.update(np.ascontiguousarray(picture).tobytes())
    return {"path": str(path), "count": len(pictures), "sha256": digest.hexdigest()}


def _identity(spec: AugmentSpec, source: Source, mixing_print: dict[str, Any]) -> dict[str, Any]:
    """What a resumed run must share with the interrupted one for its shards to be reusable."""
    return {
        "config": spec.config.to_dict(),
        "seed": spec.seed,
        "copies": spec.copies,
        "rows_per_shard": spec.rows_per_shard(),
        "compression": spec.compression,
        "source": source.fingerprint(),
        "source_count": len(source),
        "mixing_set": mixing_print,
    }


def _prepare_output(spec: AugmentSpec, overwrite: bool, resume: bool) -> Path:
    """Refuse to clobber existing output; return the shard folder, created."""
    out = spec.out
    folder = shard_dir(out)
    if out.exists() and out.is_dir():
        raise AugmentError(f"{out}: is a folder; --out names the entry file, e.g. data.h5")
    if (out.exists() or folder.exists()) and not (overwrite or resume):
        raise AugmentError(
            f"{out}: output exists; pass --overwrite to replace it or --resume to continue"
        )
    if overwrite:
        if out.exists():
            out.unlink()
        if folder.exists():
            shutil.rmtree(folder)
    try:
        (folder / WORK_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise AugmentError(f"{out}: cannot write here ({error.strerror or error})") from error
    return folder


def plan_shards(total_rows: int, rows_per_shard: int) -> list[tuple[int, int]]:
    return [
        (start, min(start + rows_per_shard, total_rows))
        for start in range(0, total_rows, rows_per_shard)
    ]


def open_inputs(spec: AugmentSpec, jobs: int = 1) -> tuple[Source, list[np.ndarray]]:
    """Open and check the data set and the mixing set (errors name the file)."""
    source = open_source(
        spec.input,
        spec.input_format,
        spec.on_error,
        split=spec.split,
        labels_path=spec.labels_path,
        n_jobs=jobs,
    )
    if len(source) == 0:
        raise AugmentError(f"{spec.input}: no readable images")
    pictures = open_mixing_set(spec.mixing_set)
    return source, pictures


def run_augment(
    spec: AugmentSpec,
    jobs: int = -1,
    overwrite: bool = False,
    resume: bool = False,
    on_start: Callable[[int, int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    backend: str = "threads",
) -> AugmentSummary:
    """Augment ``spec.input`` into shards + entry file at ``spec.out``.

    ``on_start(total_images, already_done)`` is called once the plan is known, then
    ``on_progress(n)`` after each finished shard, so a caller can drive a progress bar.
    """
    if spec.copies < 1:
        raise AugmentError(f"{spec.out}: --copies must be at least 1 (got {spec.copies})")
    if overwrite and resume:
        raise AugmentError(f"{spec.out}: choose one of --overwrite and --resume")
    started = time.perf_counter()
    in_process = backend == "threads" or (backend == "loky" and resolve_jobs(jobs) == 1)
    warming = _start_warmup(spec.config) if in_process else None
    source, pictures = open_inputs(spec, jobs=max(1, jobs))
    mixing_print = _fingerprint_mixing(pictures, spec.mixing_set)
    identity = _identity(spec, source, mixing_print)
    job_hash = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    folder = _prepare_output(spec, overwrite=overwrite, resume=resume)
    job_file = folder / WORK_DIR / JOB_FILE
    if resume and job_file.is_file():
        previous = json.loads(job_file.read_text())
        if previous != identity:
            changed = sorted(k for k in identity if previous.get(k) != identity[k])
            raise AugmentError(
                f"{spec.out}: cannot resume, the inputs or options differ from the interrupted "
                f"run ({', '.join(changed)}); use --overwrite to start again"
            )
        remove_stale_temporaries(folder)
        remove_stale_temporaries(folder / WORK_DIR)
    write_bytes_atomic(job_file, json.dumps(identity, sort_keys=True).encode())
    mixing = MixingSet.from_pictures(pictures, spec.config)
    mixing_file = folder / WORK_DIR / MIXING_FILE
    with atomic_path(mixing_file) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, pictures=mixing.pictures, shapes=mixing.shapes)
    source_file = folder / WORK_DIR / SOURCE_FILE
    write_bytes_atomic(source_file, pickle.dumps(source, protocol=pickle.HIGHEST_PROTOCOL))

    n_sources = len(source)
    ranges = plan_shards(n_sources * spec.copies, spec.rows_per_shard())
    infos: dict[int, ShardInfo] = {}
    tasks: list[_ShardTask] = []
    for index, (start, stop) in enumerate(ranges):
        path = folder / shard_filename(index)
        expected = {"count": stop - start, "index": index, "attrs": {"job": job_hash}}
        if resume and shard_is_valid(path, expected):
            infos[index] = read_shard_info(path)
        else:
            tasks.append(
                _ShardTask(index, start, stop, n_sources, source_file, mixing_file, spec, job_hash)
            )
    for stale in folder.glob("shard-*.h5"):
        if stale.name not in {shard_filename(i) for i in range(len(ranges))}:
            stale.unlink()
    reused_rows = sum(info.count for info in infos.values())
    if on_start:
        on_start(n_sources * spec.copies, reused_rows)
    if warming is not None:
        warming.join()
    results = run_unordered(_compute_shard, tasks, jobs=jobs, backend=backend)
    try:
        for info in _commit_all(results, on_progress):
            infos[info.index] = info
    except BaseException:
        results.close()  # stop the workers (threads finish the shard they are on first)
        if in_process:  # nothing writes here any more: drop what they left half-done
            remove_stale_temporaries(folder)
        raise
    # A worker killed mid-write (its task then reran elsewhere) leaves its temporary file; every
    # task has finished now, so nothing is writing here any more.
    remove_stale_temporaries(folder)

    manifest = {
        "config": spec.config.to_dict(),
        "seed": spec.seed,
        "copies": spec.copies,
        "num_sources": n_sources,
        "layout": "copy-major: row = copy * num_sources + source",
        "rows_per_shard": spec.rows_per_shard(),
        "compression": spec.compression,
        "source": {**source.to_dict(), "fingerprint": source.fingerprint()},
        "mixing_set": mixing_print,
        "skipped": [list(item) for item in source.skipped],
        "job": job_hash,
    }
    write_entry(
        spec.out, [infos[i] for i in range(len(ranges))], manifest, class_names=source.class_names
    )
    shutil.rmtree(folder / WORK_DIR)
    size = spec.out.stat().st_size + sum(p.stat().st_size for p in folder.glob("shard-*.h5"))
    return AugmentSummary(
        out=spec.out,
        images=n_sources * spec.copies,
        shards=len(ranges),
        computed_shards=len(tasks),
        reused_shards=len(ranges) - len(tasks),
        bytes=size,
        seconds=time.perf_counter() - started,
        skipped=[(str(a), str(b)) for a, b in source.skipped],
    )
