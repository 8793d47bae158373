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
import pickle
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ipmix_cli.augment.config import IPMixConfig
from ipmix_cli.augment.engine import warmup
from ipmix_cli.augment.mixing_set import MixingSet
from ipmix_cli.errors import AugmentError
from ipmix_cli.fs.atomic import atomic_path, remove_stale_temporaries, write_bytes_atomic
from ipmix_cli.jobs.augment_spec import AugmentSpec, AugmentSummary
from ipmix_cli.jobs.augment_tasks import ShardTask, commit_all, compute_shard
from ipmix_cli.jobs.parallel import resolve_jobs, run_unordered
from ipmix_cli.shards import (
    ShardInfo,
    read_shard_info,
    shard_dir,
    shard_filename,
    shard_is_valid,
    write_entry,
)
from ipmix_cli.sources import Source, open_mixing_set, open_source
from ipmix_cli.versions import byte_versions

JOB_FILE = "job.json"
MIXING_FILE = "mixing-set.npz"
SOURCE_FILE = "source.pkl"
WORK_DIR = ".work"


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
    tasks: list[ShardTask] = []
    for index, (start, stop) in enumerate(ranges):
        path = folder / shard_filename(index)
        expected = {"count": stop - start, "index": index, "attrs": {"job": job_hash}}
        if resume and shard_is_valid(path, expected):
            infos[index] = read_shard_info(path)
        else:
            tasks.append(
                ShardTask(index, start, stop, n_sources, source_file, mixing_file, spec, job_hash)
            )
    for stale in folder.glob("shard-*.h5"):
        if stale.name not in {shard_filename(i) for i in range(len(ranges))}:
            stale.unlink()
    reused_rows = sum(info.count for info in infos.values())
    if on_start:
        on_start(n_sources * spec.copies, reused_rows)
    if warming is not None:
        warming.join()
    results = run_unordered(compute_shard, tasks, jobs=jobs, backend=backend)
    try:
        for info in commit_all(results, on_progress):
            infos[info.index] = info
    except BaseException:
        results.close()  # stop the workers (threads finish the shard they are on first)
        if in_process:  # nothing writes here any more: drop what they left half-done
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
        "mixing_set": mixing_print,
        "skipped": [list(item) for item in source.skipped],
        "job": job_hash,
    }
    write_entry(
        spec.out, [infos[i] for i in range(len(ranges))], about, class_names=source.class_names
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
