"""The fractal-bank job behind ``ipmix fractals generate``: plan, render in parallel, assemble.

Work is split into fixed-size chunks keyed by image index; each chunk is written atomically by
the worker that rendered it and marked done by a small JSON file in ``.ipmix-partial``, so an
interrupted run resumes where it stopped and the result never depends on the number of
workers. The bank's own layout is ``ipmix_cli.bank.format``.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fractals import FractalOptions, make_images
from ipmix_cli.bank.format import (
    FORMATS,
    H5_NAME,
    IMAGE_DIR,
    MANIFEST,
    build_manifest,
    image_name,
    manifest_bytes,
    write_h5_apart,
)
from ipmix_cli.bank.png import encode_bank_png
from ipmix_cli.cores import resolve_jobs
from ipmix_cli.errors import BankError, DiskFullError
from ipmix_cli.fs.atomic import (
    StagedFile,
    fsync_dir,
    fsync_path,
    remove_stale_temporaries,
    stage_bytes,
    write_bytes_atomic,
    write_error,
)
from ipmix_cli.fs.lock import exclusive_lock
from ipmix_cli.fs.tree import remove_tree
from ipmix_cli.jobs.orphans import die_with_parent
from ipmix_cli.jobs.parallel import run_unordered
from ipmix_cli.versions import byte_versions

CHUNK_SIZE = 64
"""Images per work unit. Fixed (not derived from --jobs) so a resumed run can reuse chunks made
with any number of workers."""

PARTIAL_DIR = ".ipmix-partial"
LOCK_FILE = ".ipmix.lock"
"""The file a running job holds its lock on (``ipmix_cli.fs.lock``); empty once it is done."""
MAX_COUNT = 10_000_000  # images; the manifest keeps a ~1 KB record of each
COMMIT_THREADS = 4  # fsync and rename the workers' files, waiting on the disk in parallel
OUTPUT_NAMES = (IMAGE_DIR, H5_NAME, MANIFEST, PARTIAL_DIR)
"""What a bank folder holds: ``--overwrite`` removes these and nothing else."""


@dataclass(frozen=True)
class BankSpec:
    """Everything that determines a bank's bytes (worker count deliberately excluded)."""

    out: Path
    """The bank's folder (``ipmix_cli.jobs.remote_bank`` stages an ``s3://`` bank in one)."""
    count: int
    seed: int
    options: FractalOptions
    image_format: str = "png"  # "png" | "h5"
    png_compress_level: int = 1

    def validate(self) -> None:
        """Refuse, in one line, values no real bank has, before anything is written."""
        if isinstance(self.count, bool) or not 1 <= int(self.count) <= MAX_COUNT:
            raise BankError(f"{self.out}: --count must be in 1..{MAX_COUNT} (got {self.count})")
        if isinstance(self.seed, bool) or not 0 <= int(self.seed) < 1 << 64:
            raise BankError(f"{self.out}: --seed must be in 0..2**64-1 (got {self.seed})")
        if self.image_format not in FORMATS:
            raise BankError(f"{self.out}: unknown format {self.image_format!r} (png or h5)")
        if not 0 <= int(self.png_compress_level) <= 9:
            raise BankError(f"{self.out}: --png-compression must be in 0..9")

    def identity(self) -> dict:
        """The settings a resumed run must share with the interrupted one (the versions too:
        another numba or zlib may render or compress differently)."""
        return {
            "environment": byte_versions(),
            "count": self.count,
            "seed": self.seed,
            "options": self.options.to_dict(),
            "format": self.image_format,
            "png_compress_level": self.png_compress_level,
        }


@dataclass
class BankSummary:
    out: Path
    images: int
    rendered: int
    reused: int
    seconds: float
    files: list[Path] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.rendered / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class _Chunk:
    """One work unit, small enough to pickle to a worker."""

    spec: BankSpec
    index: int
    start: int
    stop: int
    parent_pid: int | None = None  # the job's process, when this runs in a worker process
    stage: bool = True  # write the files (temporary names) in the worker; else hand back bytes


def chunk_ranges(count: int) -> list[tuple[int, int]]:
    return [(start, min(start + CHUNK_SIZE, count)) for start in range(0, count, CHUNK_SIZE)]


def _chunk_record_path(out: Path, chunk: int) -> Path:
    return out / PARTIAL_DIR / f"chunk-{chunk:06d}.json"


def _chunk_array_path(out: Path, chunk: int) -> Path:
    return out / PARTIAL_DIR / f"chunk-{chunk:06d}.npy"


@dataclass(frozen=True)
class _Payload:
    """A file's final path and bytes, not yet written (a chunk rendered in this process: the
    commit threads write it, so the renderer never waits on the file system)."""

    final: Path
    data: bytes | bytearray | memoryview

    def stage(self) -> StagedFile:
        return stage_bytes(self.final, self.data)

    def stage_durable(self) -> StagedFile:
        """:meth:`stage` and fsync through the same descriptor (one open, not two)."""
        return stage_bytes(self.final, self.data, durable=True)


_ChunkFiles = tuple[int, list[StagedFile] | list[_Payload]]
"""What a rendered chunk hands to :func:`_commit_chunks`: its image count and its files, the
record that marks the chunk done last."""


def _render(chunk: _Chunk) -> tuple[np.ndarray, list[dict]]:
    spec = chunk.spec
    return make_images(spec.seed, range(chunk.start, chunk.stop), spec.options)


def _encode(chunk: _Chunk, images: np.ndarray, records: list[dict]) -> list[_Payload]:
    """A rendered chunk's files: its PNGs (or its .npy block), then its record file."""
    spec = chunk.spec
    files: list[_Payload] = []
    if spec.image_format == "png":
        for index, image, record in zip(
            range(chunk.start, chunk.stop), images, records, strict=True
        ):
            name = image_name(index, spec.count)
            png = encode_bank_png(image, spec.png_compress_level)
            files.append(_Payload(spec.out / IMAGE_DIR / name, png))
            record["file"] = f"{IMAGE_DIR}/{name}"
    else:
        buffer = io.BytesIO()
        np.save(buffer, images)
        files.append(_Payload(_chunk_array_path(spec.out, chunk.index), buffer.getbuffer()))
    record_file = {"start": chunk.start, "stop": chunk.stop, "records": records}
    data = json.dumps(record_file).encode()
    files.append(_Payload(_chunk_record_path(spec.out, chunk.index), data))
    return files


def _stage_all(files: list[_Payload]) -> list[StagedFile]:
    staged: list[StagedFile] = []
    try:
        for file in files:
            staged.append(file.stage())
    except BaseException:
        for done in staged:
            done.discard()
        raise
    return staged


def _encode_chunk(chunk: _Chunk, images: np.ndarray, records: list[dict]) -> _ChunkFiles:
    files = _encode(chunk, images, records)
    return chunk.stop - chunk.start, (_stage_all(files) if chunk.stage else files)


def _render_chunk(chunk: _Chunk) -> _ChunkFiles:
    """Worker side: render and encode a chunk's images. A worker process (loky, dask) stages
    them under temporary names and the job's own process commits them; a thread of the job's
    process hands the bytes back for the commit threads to write."""
    die_with_parent(chunk.parent_pid)
    images, records = _render(chunk)
    return _encode_chunk(chunk, images, records)


def _render_pipelined(todo: list[_Chunk]) -> Iterator[_ChunkFiles]:
    """One job in this process: this thread renders chunk k + 1 while another encodes chunk k
    (numba's kernels and libdeflate both release the GIL). At most two rendered chunks wait."""
    with ThreadPoolExecutor(1, thread_name_prefix="ipmix-encode") as encoder:
        waiting: deque[Future[_ChunkFiles]] = deque()
        try:
            for chunk in todo:
                images, records = _render(chunk)
                waiting.append(encoder.submit(_encode_chunk, chunk, images, records))
                while len(waiting) > 1:
                    yield waiting.popleft().result()
            while waiting:
                yield waiting.popleft().result()
        finally:
            for future in waiting:
                future.cancel()


def _commit_files(files: list[StagedFile] | list[_Payload]) -> None:
    """Make a chunk's files durable under their final names, the record file last: write the
    ones handed back as bytes, fsync each, rename each, fsync each folder once (a chunk counts
    as done only once its images are all in place)."""
    staged: list[StagedFile] = []
    try:
        for file in files:
            if isinstance(file, _Payload):
                staged.append(file.stage_durable())
                continue
            staged.append(file)
            try:
                fsync_path(file.tmp)
            except OSError as error:
                raise write_error(file.final, error) from None
        *images, record = staged
        for group in (images, [record]):
            for file in group:
                try:
                    os.replace(file.tmp, file.final)
                except OSError as error:
                    raise write_error(file.final, error) from None
            for folder in dict.fromkeys(file.final.parent for file in group):
                fsync_dir(folder)
    except BaseException:
        for file in staged:
            file.discard()  # a no-op for those already renamed
        raise


def _commit_chunks(
    results: Iterator[_ChunkFiles], on_progress: Callable[[int], None] | None
) -> None:
    """Commit each rendered chunk's files (:func:`_commit_files`) on a few threads of this
    process, while the workers render the next chunks."""
    futures: list[tuple[Future[None], list[StagedFile] | list[_Payload]]] = []

    with ThreadPoolExecutor(COMMIT_THREADS, thread_name_prefix="ipmix-commit") as committer:
        try:
            for count, files in results:
                futures.append((committer.submit(_commit_files, files), files))
                if on_progress:
                    on_progress(count)
            for future, _ in futures:
                future.result()
        except BaseException:
            for future, files in futures:
                if future.cancel():
                    for file in files:
                        if isinstance(file, StagedFile):
                            file.discard()
            raise


def _chunk_is_done(spec: BankSpec, chunk: int, start: int, stop: int) -> bool:
    """A chunk counts as done only if its record file parses and its images are all there."""
    try:
        data = json.loads(_chunk_record_path(spec.out, chunk).read_text())
    except (OSError, ValueError):
        return False
    if data.get("start") != start or data.get("stop") != stop:
        return False
    if spec.image_format == "png":
        return all(
            (spec.out / IMAGE_DIR / image_name(i, spec.count)).is_file() for i in range(start, stop)
        )
    try:
        array = np.load(_chunk_array_path(spec.out, chunk), mmap_mode="r")
    except (OSError, ValueError):
        return False
    size = spec.options.size
    return array.shape == (stop - start, size, size, 3) and array.dtype == np.uint8


def _prepare_folder(spec: BankSpec, overwrite: bool, resume: bool) -> bool:
    """Refuse to clobber what a user already has; set up or validate the partial state.
    Returns whether finished chunks may be reused (a resume)."""
    out = spec.out
    partial = out / PARTIAL_DIR
    job_file = partial / "job.json"
    existing = sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE)
    if existing and resume:
        if not job_file.is_file():
            if (out / MANIFEST).is_file():
                raise BankError(f"{out}: the bank is already complete; nothing to resume")
            raise BankError(f"{out}: no interrupted bank to resume (no {PARTIAL_DIR}/job.json)")
        try:
            previous = json.loads(job_file.read_text())
        except (OSError, ValueError) as error:
            raise BankError(
                f"{job_file}: unreadable record of the interrupted run ({error}); pass "
                "--overwrite to start again"
            ) from None
        if not isinstance(previous, dict) or previous != spec.identity():
            known = previous if isinstance(previous, dict) else {}
            changed = sorted(k for k in spec.identity() if known.get(k) != spec.identity()[k])
            raise BankError(
                f"{out}: cannot resume, options differ from the interrupted run "
                f"({', '.join(changed)}); pass --overwrite to start again"
            )
        for folder in (out, out / IMAGE_DIR, partial):
            remove_stale_temporaries(folder)
        return True
    if existing:
        if not overwrite:
            raise BankError(
                f"{out}: folder is not empty ({len(existing)} entries); "
                "pass --overwrite to replace it or --resume to continue an interrupted run"
            )
        for name in OUTPUT_NAMES:
            remove_tree(out / name)
    try:
        (out / IMAGE_DIR if spec.image_format == "png" else out).mkdir(parents=True, exist_ok=True)
        partial.mkdir(exist_ok=True)
    except OSError as error:
        raise BankError(f"{out}: cannot write here ({error.strerror or error})") from error
    write_bytes_atomic(job_file, json.dumps(spec.identity(), sort_keys=True).encode())
    return False


def _collect_records(spec: BankSpec) -> list[dict]:
    records: list[dict] = []
    for chunk, _ in enumerate(chunk_ranges(spec.count)):
        records.extend(json.loads(_chunk_record_path(spec.out, chunk).read_text())["records"])
    return records


def generate_bank(
    spec: BankSpec,
    jobs: int = -1,
    overwrite: bool = False,
    resume: bool = False,
    on_progress: Callable[[int], None] | None = None,
    backend: str = "threads",
) -> BankSummary:
    """Render a bank into ``spec.out``; safe to interrupt and ``resume``.

    ``on_progress(n)`` is called with the number of images finished (already-done chunks are
    reported first, in one call) so the caller can drive a progress bar.
    """
    spec.validate()
    if overwrite and resume:
        raise BankError(f"{spec.out}: choose one of --overwrite and --resume")
    out = spec.out
    if out.exists() and not out.is_dir():
        raise BankError(f"{out}: exists and is not a folder")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BankError(f"{out}: cannot write here ({error.strerror or error})") from error
    try:
        with exclusive_lock(out / LOCK_FILE, out):
            return _generate(spec, jobs, overwrite, resume, on_progress, backend)
    except BaseException as error:
        if created and not any(p.name != LOCK_FILE for p in out.iterdir()):
            remove_tree(out)  # nothing of this attempt is worth keeping
        if isinstance(error, DiskFullError):
            raise DiskFullError(
                f"{error}; finished images are kept; free space and rerun with --resume"
            ) from None
        raise


def _generate(
    spec: BankSpec,
    jobs: int,
    overwrite: bool,
    resume: bool,
    on_progress: Callable[[int], None] | None,
    backend: str,
) -> BankSummary:
    started = time.perf_counter()
    reuse = _prepare_folder(spec, overwrite=overwrite, resume=resume)
    parent_pid = os.getpid() if backend == "loky" else None
    one_job = resolve_jobs(jobs) == 1
    here = backend == "threads" or one_job and backend != "dask"
    todo: list[_Chunk] = []
    reused = 0
    for chunk, (start, stop) in enumerate(chunk_ranges(spec.count)):
        if reuse and _chunk_is_done(spec, chunk, start, stop):
            reused += stop - start
        else:
            todo.append(_Chunk(spec, chunk, start, stop, parent_pid, stage=not here))
    if on_progress and reused:
        on_progress(reused)
    if here and one_job:
        results = _render_pipelined(todo)
    else:
        results = run_unordered(_render_chunk, todo, jobs=jobs, backend=backend)
    try:
        _commit_chunks(results, on_progress)
    except BaseException:
        results.close()
        if backend != "dask":  # nothing of ours writes here any more
            for folder in (spec.out, spec.out / IMAGE_DIR, spec.out / PARTIAL_DIR):
                remove_stale_temporaries(folder)
        raise
    # A worker killed mid-write (its chunk then reran elsewhere) leaves temporary files; every
    # chunk has finished now, so nothing is writing here any more.
    for folder in (spec.out, spec.out / IMAGE_DIR, spec.out / PARTIAL_DIR):
        remove_stale_temporaries(folder)
    manifest = build_manifest(
        image_format=spec.image_format,
        count=spec.count,
        seed=spec.seed,
        options=spec.options.to_dict(),
        png_compress_level=spec.png_compress_level,
        records=_collect_records(spec),
    )
    if spec.image_format == "h5":
        chunks = [
            (start, _chunk_array_path(spec.out, chunk))
            for chunk, (start, _) in enumerate(chunk_ranges(spec.count))
        ]
        write_h5_apart(spec.out / H5_NAME, manifest, spec.options.size, chunks)
    write_bytes_atomic(spec.out / MANIFEST, manifest_bytes(manifest))
    remove_tree(spec.out / PARTIAL_DIR)
    return BankSummary(
        out=spec.out,
        images=spec.count,
        rendered=spec.count - reused,
        reused=reused,
        seconds=time.perf_counter() - started,
    )
