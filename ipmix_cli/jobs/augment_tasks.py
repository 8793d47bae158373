"""The worker side of the augment job: one task computes one shard.

A task is a few hundred bytes to pickle: the source and the mixing set travel as files in the
job's work folder, loaded once per worker process (not once per shard). A worker writes its
shard under a temporary name and hands back a :class:`~ipmix_cli.shards.PendingShard`; the
process that owns the output commits it (:func:`commit_all`), so the workers compute while the
disk catches up.
"""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ipmix_cli.augment.config import IPMixConfig
from ipmix_cli.augment.engine import augment_batch, augment_images, clean_images
from ipmix_cli.augment.mixing_set import MixingSet
from ipmix_cli.errors import AugmentError
from ipmix_cli.fs.readahead import read_ahead
from ipmix_cli.jobs.augment_spec import AugmentSpec
from ipmix_cli.jobs.orphans import die_with_parent
from ipmix_cli.remote.store import ObjectStore
from ipmix_cli.remote.upload import PendingUpload, UploadedShard, stage_root
from ipmix_cli.remote.url import ObjectURL, shards_prefix
from ipmix_cli.shards import PendingShard, ShardInfo, copy_and_source, shard_dir, shard_filename
from ipmix_cli.shards.write import write_shard_pending
from ipmix_cli.sources import Source

_WORKER_LOADS = threading.Lock()

_HANDED: dict[tuple[str, str], MixingSet] = {}
"""Mixing sets handed to tasks that run in the job's own process, by work-file path and job."""


@contextlib.contextmanager
def handed_mixing(path: Path, job_hash: str, mixing: MixingSet) -> Iterator[None]:
    """Let the tasks of job ``job_hash`` that run in this process take ``mixing`` as it is,
    instead of the work file at ``path``, which then need not exist.

    Why: at 224 px the prepared set is ~40 MB. Writing it as a work file and reading it back
    in the same process cost ~0.25 s of a one-core run (fresh page-cache pages, two copies and
    the zip CRC), a fifth of the command's fixed cost; worker processes still read the file.
    """
    key = (str(path), job_hash)
    _HANDED[key] = mixing
    try:
        yield
    finally:
        _HANDED.pop(key, None)


def _task_mixing(task: ShardTask, config_json: str) -> MixingSet:
    handed = _HANDED.get((str(task.mixing_file), task.job_hash))
    if handed is not None:
        return handed
    return _load_mixing(task.mixing_file, config_json, task.job_hash)


@dataclass(frozen=True)
class ShardTask:
    """The shards of one range of sources, one shard per copy still to make: the task decodes
    each of its images once and augments every copy of it (rows are copy-major, so the copies
    of a source lie in as many shards). A few hundred bytes to pickle: the source and the
    mixing set travel as files in the job's work folder (a source's file list and labels grow
    with the data set, ~50 MB for ImageNet, too much to ship with each of its tasks)."""

    shards: tuple[tuple[int, int, int], ...]
    """``(index, first row, end row)`` of each shard; every one covers the same sources."""
    n_sources: int
    source_file: Path | ObjectURL
    mixing_file: Path | ObjectURL
    """The work files: local paths, or objects in the output's bucket for dask workers that
    may not see the job's disk."""
    spec: AugmentSpec
    job_hash: str
    parent_pid: int | None = None
    """The pid of the job's process when this task runs in a local worker process."""
    num_shards: int = 1
    stage_on_worker: bool = False
    """For an ``s3://`` output on dask: stage each shard on the worker's own disk (its
    ``IPMIX_STAGE_DIR``), not in the job's staging folder, which another host cannot see."""


def _work_bytes(path: Path | ObjectURL) -> bytes:
    """A work file's bytes, from the job's folder or from the output's bucket."""
    if isinstance(path, ObjectURL):
        return ObjectStore(path.bucket).get_bytes(path.key)
    return Path(path).read_bytes()


@lru_cache(maxsize=2)
def _load_mixing(path: Path | ObjectURL, config_json: str, job_hash: str) -> MixingSet:
    """Each worker process loads the prepared mixing set once, not once per shard. The job hash
    is part of the key because dask workers outlive jobs: a later job writing the same path
    with another mixing set must not get this one."""
    config = IPMixConfig.from_dict(json.loads(config_json))
    with np.load(io.BytesIO(_work_bytes(path))) as data:
        return MixingSet(data["pictures"], data["shapes"], config.size, config.mixing_side)


@lru_cache(maxsize=1)
def _load_source(path: Path | ObjectURL, job_hash: str) -> Source:
    """Each worker process unpickles the source once (it reopens its files lazily); keyed by
    job hash like :func:`_load_mixing`. The file is the job's own, written by the parent. One
    entry only: a source caches what it reads (a whole .npz, say), and a long-lived worker
    should not keep the previous job's copy."""
    return pickle.loads(_work_bytes(path))


DEFERRED_BYTES = 512 << 20
"""Most bytes of staged shards waiting for their deferred write (``fs.atomic.deferred_writes``)
before :func:`commit_all` lets the next task compute."""

INDEX_KEYS = ("labels", "source_index", "copy_index")
DECODE_BATCH = 64  # sources decoded at a time within a task: bounds the memory of originals


def augment_rows(
    spec: AugmentSpec,
    rows: np.ndarray,
    n_sources: int,
    source: Source,
    mixing: MixingSet | None,
    images: np.ndarray | list[np.ndarray] | None = None,
    out: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The shard arrays of output ``rows`` (any rows: a shard's range, or the sample that the
    dry run times); ``images``: the rows' source images when already decoded; ``out``: the
    (rows, views, H, W, 3) block of the shard's rows to fill (the image arrays returned are
    views of it), so a shard's batches need no gathering afterwards."""
    config = spec.config
    copies, sources = copy_and_source(np.asarray(rows, dtype=np.int64), n_sources)
    labels = np.asarray(source.labels, dtype=np.int64)[sources]
    if images is None:
        images = source.read_batch(sources)
    expected = (*config.size, 3)
    uniform = isinstance(images, np.ndarray) and images.shape[1:] == expected
    # The engine's own result shape: (rows, H, W, 3) for one view.
    into = out if out is None or config.jsd else out.reshape(out.shape[0], *out.shape[2:])
    if spec.clean:
        result = clean_images(list(images), config)
        if into is not None:
            into[...] = result
    elif config.pre != "imagenet" and uniform:  # the batch kernel: no per-image Python
        batch = np.asarray(images)
        result = augment_batch(batch, sources, copies, mixing, config, spec.seed, out=into)
    elif config.accepts_any_size:
        result = augment_images(list(images), sources, copies, mixing, config, spec.seed, out=into)
    else:  # checked before the job started; a file changed since?
        shapes = {tuple(np.shape(image)) for image in images}
        bad = next(s for s in shapes if s != expected)
        raise AugmentError(
            f"{spec.input}: an image of {bad[0]}x{bad[1]} px reached a worker, but --resize "
            f"exact takes {expected[0]}x{expected[1]} images only (did a file change during "
            "the run?)"
        )
    arrays = {"labels": labels, "source_index": sources, "copy_index": copies}
    arrays.update(image_arrays(result if out is None else out, config.jsd))
    return arrays


def image_arrays(block: np.ndarray, jsd: bool) -> dict[str, np.ndarray]:
    """A shard's image datasets as views of its (rows, views, H, W, 3) ``block`` of rows (or
    (rows, H, W, 3) with one view)."""
    if jsd:
        return {"clean": block[:, 0], "images": block[:, 1], "images2": block[:, 2]}
    return {"images": block.reshape(block.shape[0], *block.shape[-3:])}


def compute_shards(task: ShardTask) -> list[PendingShard | UploadedShard]:
    """Worker side: augment the task's shards and write each under a temporary name; the
    parent commits them (:func:`commit_all`). Images are decoded ``DECODE_BATCH`` at a time,
    once for all the copies."""
    die_with_parent(task.parent_pid)
    spec = task.spec
    config_json = json.dumps(spec.config.to_dict(), sort_keys=True)
    with _WORKER_LOADS:  # the threads backend: one load per process, not one per thread
        mixing = None if spec.clean else _task_mixing(task, config_json)
        source = _load_source(task.source_file, task.job_hash)
    n = task.n_sources
    first = task.shards[0][1] % n
    count = task.shards[0][2] - task.shards[0][1]
    # Each shard's rows are computed straight into its block, batch by batch.
    h, w = spec.config.size
    views = spec.config.n_views
    blocks = [np.empty((count, views, h, w, 3), np.uint8) for _ in task.shards]
    parts: list[list[dict[str, np.ndarray]]] = [[] for _ in task.shards]
    files = source.file_paths(range(first, first + count))
    with read_ahead(files, depth=2 * DECODE_BATCH) as ahead:  # the next batch's files
        for a in range(first, first + count, DECODE_BATCH):
            sources = np.arange(a, min(a + DECODE_BATCH, first + count), dtype=np.int64)
            images = source.read_batch(sources)
            if ahead is not None:
                ahead.consumed(len(sources))
            for k, (_, start, _) in enumerate(task.shards):
                rows = start - first + sources  # the same sources, copy start // n
                block = blocks[k][a - first : a - first + len(sources)]
                arrays = augment_rows(spec, rows, n, source, mixing, images, block)
                parts[k].append({key: arrays[key] for key in INDEX_KEYS})
    pending: list[PendingShard | UploadedShard] = []
    for (index, _, _), chunks in zip(task.shards, parts, strict=True):
        arrays = {key: np.concatenate([c[key] for c in chunks]) for key in INDEX_KEYS}
        # Handed over: once written, nothing here holds the rows (a deferred write may).
        arrays.update(image_arrays(blocks.pop(0), spec.config.jsd))
        name = shard_filename(index, task.num_shards)
        folder = stage_root() / task.job_hash if task.stage_on_worker else shard_dir(spec.out)
        shard = write_shard_pending(
            folder / name,
            arrays,
            attrs={"job": task.job_hash},
            index=index,
            compression=spec.compression,
            codec=spec.codec,
            quality=spec.quality,
            file_name=name,
        )
        del arrays
        if spec.remote is not None:  # the worker uploads: one staged shard per worker at most
            url = shards_prefix(spec.remote).child(name)
            pending.append(PendingUpload(shard.staged, shard.info, url).upload())
        else:
            pending.append(shard)
    return pending


def commit_all(
    pending: Iterator[list[PendingShard | UploadedShard]],
    on_progress: Callable[[int], None] | None,
) -> list[ShardInfo]:
    """Commit each shard a worker hands back (fsync, rename) on a thread of this process, so
    that the workers compute while the disk catches up; return their infos once all are
    durable.

    Progress counts computed shards. If anything fails or the run is interrupted, commits not
    yet started are dropped with their temporary files: a shard exists under its final name
    only once it is complete and on disk.
    """
    commits: list[tuple[Future[ShardInfo], PendingShard | UploadedShard]] = []
    waiting: deque[tuple[Future[ShardInfo], int]] = deque()  # deferred writes not done yet
    with ThreadPoolExecutor(1, thread_name_prefix="ipmix-commit") as committer:
        try:
            for shards in pending:
                for shard in shards:
                    staged = getattr(shard, "staged", None)
                    unwritten = staged.waiting_bytes if staged is not None else 0
                    future = committer.submit(shard.commit)
                    commits.append((future, shard))
                    if unwritten:
                        waiting.append((future, unwritten))
                    if on_progress:
                        on_progress(shard.info.count)
                # A disk slower than the computing: hold what waits to be written to a bound
                # before the next task computes (deferred writes keep their rows in memory).
                while waiting and sum(n for _, n in waiting) > DEFERRED_BYTES:
                    waiting.popleft()[0].result()
                while waiting and waiting[0][0].done():
                    waiting.popleft()
            return [future.result() for future, _ in commits]
        except BaseException:
            for future, shard in commits:
                if future.cancel():
                    shard.discard()
            raise
