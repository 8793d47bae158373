"""The worker side of the augment job: one task computes one shard.

A task is a few hundred bytes to pickle: the source and the mixing set travel as files in the
job's work folder, loaded once per worker process (not once per shard). A worker writes its
shard under a temporary name and hands back a :class:`~ipmix_cli.shards.PendingShard`; the
process that owns the output commits it (:func:`commit_all`), so the workers compute while the
disk catches up.
"""

from __future__ import annotations

import json
import pickle
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ipmix_cli.augment.config import IPMixConfig
from ipmix_cli.augment.engine import augment_batch, augment_images
from ipmix_cli.augment.mixing_set import MixingSet
from ipmix_cli.errors import AugmentError
from ipmix_cli.jobs.augment_spec import AugmentSpec
from ipmix_cli.jobs.orphans import die_with_parent
from ipmix_cli.shards import PendingShard, ShardInfo, copy_and_source, shard_dir, shard_filename
from ipmix_cli.shards.write import write_shard_pending
from ipmix_cli.sources import Source

_WORKER_LOADS = threading.Lock()


@dataclass(frozen=True)
class ShardTask:
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
    parent_pid: int | None = None
    """The pid of the job's process when this task runs in a local worker process."""


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


def _augment_rows(task: ShardTask, source: Source, mixing: MixingSet) -> dict[str, np.ndarray]:
    spec, config = task.spec, task.spec.config
    rows = np.arange(task.start, task.stop, dtype=np.int64)
    copies, sources = copy_and_source(rows, task.n_sources)
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
        if shapes != {expected}:  # checked before the job started; a file changed since?
            bad = next(s for s in shapes if s != expected)
            raise AugmentError(
                f"{spec.input}: an image of {bad[0]}x{bad[1]} px reached a worker, but the "
                f"{config.pre} pre-transform takes {expected[0]}x{expected[1]} images only "
                "(did a file change during the run?)"
            )
        out = augment_batch(np.asarray(images), sources, copies, mixing, config, spec.seed)
    arrays = {"labels": labels, "source_index": sources, "copy_index": copies}
    if config.jsd:
        arrays.update(clean=out[:, 0], images=out[:, 1], images2=out[:, 2])
    else:
        arrays["images"] = out
    return arrays


def compute_shard(task: ShardTask) -> PendingShard:
    """Worker side: augment one shard's rows and write the shard under a temporary name; the
    parent commits it (:func:`commit_all`)."""
    die_with_parent(task.parent_pid)
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


def commit_all(
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
