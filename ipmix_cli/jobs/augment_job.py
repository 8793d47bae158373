"""The job behind ``ipmix augment``: plan shards, augment them in workers, join them.

A shard is a fixed range of copy-major rows (``ipmix_cli.shards.layout``); the worker that
computes it writes it atomically, so a killed run loses at most the shards in flight, and
``resume`` recomputes exactly the missing or invalid ones. Every sample's bytes depend only on
(seed, source, copy, view), so the result is the same for any number of workers and after any
number of resumes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import pickle
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ipmix_cli.augment.config import IPMixConfig
from ipmix_cli.augment.engine import warmup
from ipmix_cli.augment.mixing_set import MixingSet, resized_shape
from ipmix_cli.cores import resolve_jobs
from ipmix_cli.errors import AugmentError, DiskFullError
from ipmix_cli.fs.atomic import (
    atomic_path,
    remove_stale_temporaries,
    write_bytes_atomic,
    write_error,
)
from ipmix_cli.fs.tree import remove_tree
from ipmix_cli.jobs.augment_output import AugmentOutput
from ipmix_cli.jobs.augment_spec import AugmentSpec, AugmentSummary
from ipmix_cli.jobs.augment_tasks import ShardTask, commit_all, compute_shard
from ipmix_cli.jobs.parallel import run_unordered
from ipmix_cli.shards import (
    ShardInfo,
    read_shard_info,
    shard_filename,
    shard_is_valid,
    write_entry,
)
from ipmix_cli.sources import Source, open_mixing_set, open_source
from ipmix_cli.versions import byte_versions

MIXING_FILE = "mixing-set.npz"
SOURCE_FILE = "source.pkl"
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


def _fingerprint_mixing(pictures: list[np.ndarray], path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    for picture in pictures:
        digest.update(f"{picture.shape}".encode())
        digest.update(np.ascontiguousarray(picture).tobytes())
    return {"path": str(path), "count": len(pictures), "sha256": digest.hexdigest()}


def _identity(spec: AugmentSpec, source: Source, mixing_print: dict[str, Any]) -> dict[str, Any]:
    """What a resumed run must share with the interrupted one for its shards to be reusable."""
    return {
        "environment": byte_versions(),
        "config": spec.config.to_dict(),
        "seed": spec.seed,
        "copies": spec.copies,
        "rows_per_shard": spec.rows_per_shard(),
        "compression": spec.compression,
        "source": source.fingerprint(),
        "source_count": len(source),
        "mixing_set": mixing_print,
    }


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


@dataclass
class AugmentPlan:
    """Everything the job knows once its checks have passed, before it writes anything."""

    spec: AugmentSpec
    source: Source
    pictures: list[np.ndarray]
    mixing_print: dict[str, Any]
    identity: dict[str, Any]
    job_hash: str

    @property
    def rows(self) -> int:
        return len(self.source) * self.spec.copies

    @property
    def num_shards(self) -> int:
        return math.ceil(self.rows / self.spec.rows_per_shard())


def preflight(spec: AugmentSpec, jobs: int = 1) -> AugmentPlan:
    """Every check the job can make before it starts, in the order of their cost; ``--dry-run``
    runs exactly this. Nothing is written."""
    spec.validate()
    output = AugmentOutput(spec.out)
    output.check_names()
    output.check_apart_from([spec.input, spec.mixing_set, spec.labels_path])
    source, pictures = open_inputs(spec, jobs=jobs)
    spec.validate_size(len(source))
    config = spec.config
    if config.pre in ("cifar", "none"):
        other = source.image_of_other_size(config.size)
        if other is not None:
            path, (h, w) = other
            raise AugmentError(
                path,
                f"image is {h}x{w}, but the {config.pre} pre-transform takes "
                f"{config.size[0]}x{config.size[1]} images only (the output size); "
                "--pre imagenet (RandomResizedCrop) takes any size",
            )
    _check_mixing_memory(spec, pictures)
    mixing_print = _fingerprint_mixing(pictures, spec.mixing_set)
    identity = _identity(spec, source, mixing_print)
    job_hash = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return AugmentPlan(spec, source, pictures, mixing_print, identity, job_hash)


def _check_mixing_memory(spec: AugmentSpec, pictures: list[np.ndarray]) -> None:
    """The mixing set is prepared for the output size once, in memory: refuse one that would
    not fit before resizing anything."""
    config = spec.config
    shapes = [resized_shape(*p.shape[:2], config.mixing_side, config.size) for p in pictures]
    hmax, wmax = max(h for h, _ in shapes), max(w for _, w in shapes)
    need = len(pictures) * hmax * wmax * 3
    if need > MAX_MIXING_BYTES:
        raise AugmentError(
            spec.mixing_set,
            f"{len(pictures)} mixing pictures prepared for {config.size[0]}x{config.size[1]} "
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
) -> AugmentSummary:
    """Augment ``spec.input`` into shards + entry file at ``spec.out``.

    ``on_start(total_images, already_done)`` is called once the plan is known, then
    ``on_progress(n)`` after each finished shard, so a caller can drive a progress bar.
    """
    if overwrite and resume:
        raise AugmentError(f"{spec.out}: choose one of --overwrite and --resume")
    started = time.perf_counter()
    in_process = backend == "threads" or (backend == "loky" and resolve_jobs(jobs) == 1)
    warming = _start_warmup(spec.config) if in_process else None
    try:
        plan = preflight(spec, jobs=max(1, jobs))
        output = AugmentOutput(spec.out)
        with output.lock():
            try:
                summary = _run(
                    plan, output, jobs, overwrite, resume, on_start, on_progress, backend
                )
            except BaseException as error:
                output.discard_attempt()
                if isinstance(error, DiskFullError):
                    raise DiskFullError(
                        f"{error}; finished shards are kept; free space and rerun with --resume"
                    ) from None
                raise
    finally:
        if warming is not None:
            warming.join()
    summary.seconds = time.perf_counter() - started
    return summary


def _run(
    plan: AugmentPlan,
    output: AugmentOutput,
    jobs: int,
    overwrite: bool,
    resume: bool,
    on_start: Callable[[int, int], None] | None,
    on_progress: Callable[[int], None] | None,
    backend: str,
) -> AugmentSummary:
    spec, source, job_hash = plan.spec, plan.source, plan.job_hash
    reuse = output.claim(plan.identity, job_hash, overwrite=overwrite, resume=resume)
    folder = output.folder
    if reuse:  # nothing else writes here (we hold the lock): drop what a killed run left
        remove_stale_temporaries(folder)
        remove_stale_temporaries(output.work)
    try:
        output.work.mkdir(exist_ok=True)
    except OSError as error:
        raise write_error(output.work, error) from None
    write_bytes_atomic(output.job_file, json.dumps(plan.identity, sort_keys=True).encode())
    mixing = MixingSet.from_pictures(plan.pictures, spec.config)
    mixing_file = output.work / MIXING_FILE
    try:
        with atomic_path(mixing_file) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, pictures=mixing.pictures, shapes=mixing.shapes)
    except OSError as error:
        raise write_error(mixing_file, error) from None
    source_file = output.work / SOURCE_FILE
    write_bytes_atomic(source_file, pickle.dumps(source, protocol=pickle.HIGHEST_PROTOCOL))

    n_sources = len(source)
    ranges = plan_shards(plan.rows, spec.rows_per_shard())
    parent_pid = os.getpid() if backend == "loky" else None
    infos: dict[int, ShardInfo] = {}
    tasks: list[ShardTask] = []
    for index, (start, stop) in enumerate(ranges):
        path = folder / shard_filename(index)
        expected = {"count": stop - start, "index": index, "attrs": {"job": job_hash}}
        if reuse and shard_is_valid(path, expected):
            infos[index] = read_shard_info(path)
        else:
            tasks.append(
                ShardTask(
                    index,
                    start,
                    stop,
                    n_sources,
                    source_file,
                    mixing_file,
                    spec,
                    job_hash,
                    parent_pid,
                )
            )
    wanted = {shard_filename(i) for i in range(len(ranges))}
    for stale in output.finished_shards():
        if stale.name not in wanted:
            stale.unlink()
    reused_rows = sum(info.count for info in infos.values())
    if on_start:
        on_start(plan.rows, reused_rows)
    results = run_unordered(compute_shard, tasks, jobs=jobs, backend=backend)
    try:
        for info in commit_all(results, on_progress):
            infos[info.index] = info
    except BaseException:
        results.close()  # stop the workers (threads finish the shard they are on first)
        if backend != "dask":  # nothing of ours writes here any more: drop what was half-done
            remove_stale_temporaries(folder)
        raise
    # A worker killed mid-write (its task then reran elsewhere) leaves its temporary file; every
    # task has finished now, so nothing is writing here any more.
    remove_stale_temporaries(folder)

    about = {
        "environment": byte_versions(),
        "config": spec.config.to_dict(),
        "seed": spec.seed,
        "copies": spec.copies,
        "num_sources": n_sources,
        "rows_per_shard": spec.rows_per_shard(),
        "compression": spec.compression,
        "source": {**source.to_dict(), "fingerprint": source.fingerprint()},
        "mixing_set": plan.mixing_print,
        "skipped": [list(item) for item in source.skipped],
        "job": job_hash,
    }
    write_entry(  # every shard was just committed or deep-checked: no need to re-read them
        spec.out,
        [infos[i] for i in range(len(ranges))],
        about,
        class_names=source.class_names,
        check_shards=False,
    )
    remove_tree(output.work)
    size = spec.out.stat().st_size + sum(p.stat().st_size for p in output.finished_shards())
    return AugmentSummary(
        out=spec.out,
        images=plan.rows,
        shards=len(ranges),
        computed_shards=len(tasks),
        reused_shards=len(ranges) - len(tasks),
        bytes=size,
        seconds=0.0,
        skipped=[(str(a), str(b)) for a, b in source.skipped],
    )
