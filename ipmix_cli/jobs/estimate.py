"""How large an output will be and how long the job will take, known before it starts.

The dry run prints these and the real run checks the size against the free space, so that a
job that cannot fit is refused at its start rather than failing hours in with a full disk. Raw
images have an exact size. JPEG and PNG sizes depend on the pictures, so a sample of rows
spread over the whole job (every class, every copy) is augmented, encoded and written as a shard
exactly as the workers will (in a scratch folder); the same sample, timed after a warm-up row,
gives the time per row, and run again split over the workers' threads, how well they share the
machine (Pillow's resize holds the GIL, so threads do not always scale).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ipmix_cli.augment.mixing_set import MixingSet
from ipmix_cli.cores import resolve_jobs
from ipmix_cli.errors import OutputError
from ipmix_cli.fs.atomic import fsync_path
from ipmix_cli.fs.tree import nearest_existing
from ipmix_cli.jobs.augment_spec import AugmentSpec, human_bytes
from ipmix_cli.jobs.augment_tasks import augment_rows
from ipmix_cli.shards.layout import IMAGE_DATASETS, INDEX_DATASETS
from ipmix_cli.shards.write import write_shard_pending
from ipmix_cli.sources import Source

SAMPLE_ROWS = 48
SHARD_OVERHEAD = 16 << 10  # bytes: HDF5 superblock, headers, attributes, chunk index
PARALLEL_EFFICIENCY = 0.9  # of each extra worker, measured on two cores (docs/performance.md)


@dataclass(frozen=True)
class Estimate:
    """Output bytes and, when timed, seconds of the work still to do."""

    bytes: int
    seconds: float | None
    sampled_rows: int
    exact: bool = True
    warmup: float = 0.0
    """Seconds the first sampled row took: loading the kernels, which every run pays once."""

    def describe(self) -> str:
        how = "exact" if self.exact else f"estimated from {self.sampled_rows} sampled rows"
        took = f", about {_human_seconds(self.seconds)}" if self.seconds is not None else ""
        return f"{human_bytes(self.bytes)} ({how}){took}"


def _human_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def sample_rows(total_rows: int, n: int = SAMPLE_ROWS) -> np.ndarray:
    """``n`` rows spread evenly over the job (all of them when there are fewer)."""
    if total_rows <= n:
        return np.arange(total_rows, dtype=np.int64)
    return np.unique(np.linspace(0, total_rows - 1, n).round().astype(np.int64))


def estimate_output(
    spec: AugmentSpec,
    source: Source,
    mixing: MixingSet | None,
    rows: int,
    shards: int,
    *,
    timed: bool,
    jobs: int = -1,
    backend: str = "threads",
) -> Estimate:
    """Bytes of ``rows`` output rows in ``shards`` shards, and with ``timed`` the seconds their
    computing takes on ``jobs`` workers of this machine (the first sampled row, which loads the
    kernels, is timed apart: :attr:`Estimate.warmup`)."""
    fixed = shards * SHARD_OVERHEAD + rows * 8 * len(INDEX_DATASETS)
    if not (timed or spec.codec != "raw") or rows == 0:
        return Estimate(fixed + rows * spec.row_bytes(), None, 0)
    picked = sample_rows(len(source) * spec.copies)
    start = time.perf_counter()
    augment_rows(spec, picked[:1], len(source), source, mixing)  # loads kernels, caches
    warmup = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="ipmix-estimate-") as scratch:
        start = time.perf_counter()
        # The encoded rows alone (payload), and what the sample's shard adds to them
        # (headers, heap, indices: a lot at 32 px), counted once per shard.
        stored, payload = _sample_shard(spec, source, mixing, picked, Path(scratch) / "all.h5")
        serial = time.perf_counter() - start
        workers = resolve_jobs(jobs)
        speedup = 1 + (workers - 1) * PARALLEL_EFFICIENCY
        if timed and workers > 1 and backend == "threads" and len(picked) >= 2 * workers:
            parts = np.array_split(picked, workers)  # the GIL decides: measure, don't assume
            start = time.perf_counter()
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(
                    lambda k: _sample_shard(
                        spec, source, mixing, parts[k], Path(scratch) / f"part{k}.h5"
                    ),
                    range(workers),
                ))  # fmt: skip
            speedup = min(workers, serial / max(time.perf_counter() - start, 1e-9))
    if spec.codec == "raw":
        total = fixed + rows * spec.row_bytes()
    else:
        per_row = payload / len(picked)
        total = round(per_row * rows + max(0, stored - payload) * shards)
    took = serial / len(picked) * rows / speedup if timed else None
    return Estimate(total, took, len(picked), spec.codec == "raw", warmup)


def _sample_shard(
    spec: AugmentSpec, source: Source, mixing: MixingSet | None, rows: np.ndarray, path: Path
) -> tuple[int, int]:
    """What a worker does for ``rows``: decode, augment, encode, checksum, build the shard,
    write and fsync it (in a scratch folder, not at the destination). Returns the file's bytes
    and those of its encoded images alone (0 for raw), read back from the file."""
    arrays = augment_rows(spec, rows, len(source), source, mixing)
    pending = write_shard_pending(
        path, arrays, index=0, compression=spec.compression, codec=spec.codec, quality=spec.quality
    )
    try:
        fsync_path(pending.tmp)
        payload = 0
        if spec.codec != "raw":
            with h5py.File(pending.tmp, "r") as f:
                payload = sum(
                    len(blob) for name in IMAGE_DATASETS if name in f for blob in f[name][()]
                )
        return pending.tmp.stat().st_size, payload
    finally:
        pending.discard()


def free_bytes(path: Path) -> tuple[Path, int]:
    """The free space where ``path`` will be written (its nearest existing folder)."""
    folder = nearest_existing(path)
    return folder, int(shutil.disk_usage(folder).free)


def check_space(path: Path, need: int) -> None:
    """Refuse a job whose output cannot fit, before any work (``--no-space-check`` skips it)."""
    folder, free = free_bytes(path)
    if need > free:
        raise OutputError(
            path,
            f"the output needs about {human_bytes(need)} but {folder} has {human_bytes(free)} "
            "free; free space, write elsewhere, or pass --no-space-check",
        )
