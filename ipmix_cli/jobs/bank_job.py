"""The fractal-bank job behind ``ipmix fractals generate``: plan, render in parallel, assemble.

Work is split into fixed-size chunks keyed by image index; each chunk is written atomically by
the worker that rendered it and marked done by a small JSON file in ``.ipmix-partial``, so an
interrupted run resumes where it stopped and the result never depends on the number of
workers. The bank's own layout is ``ipmix_cli.bank.format``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
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
    write_h5,
)
from ipmix_cli.bank.png import encode_rgb_png
from ipmix_cli.errors import BankError
from ipmix_cli.fs.atomic import atomic_path, remove_stale_temporaries, write_bytes_atomic
from ipmix_cli.jobs.parallel import run_unordered
from ipmix_cli.versions import byte_versions

CHUNK_SIZE = 64
"""Images per work unit. Fixed (not derived from --jobs) so a resumed run can reuse chunks made
with any number of workers."""

PARTIAL_DIR = ".ipmix-partial"
OUTPUT_NAMES = (IMAGE_DIR, H5_NAME, MANIFEST, PARTIAL_DIR)
"""What a bank folder holds: ``--overwrite`` removes these and nothing else."""


@dataclass(frozen=True)
class BankSpec:
    """Everything that determines a bank's bytes (worker count deliberately excluded)."""

    out: Path
    count: int
    seed: int
    options: FractalOptions
    image_format: str = "png"  # "png" | "h5"
    png_compress_level: int = 1

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


def chunk_ranges(count: int) -> list[tuple[int, int]]:
    return [(start, min(start + CHUNK_SIZE, count)) for start in range(0, count, CHUNK_SIZE)]


def _chunk_record_path(out: Path, chunk: int) -> Path:
    return out / PARTIAL_DIR / f"chunk-{chunk:06d}.json"


def _chunk_array_path(out: Path, chunk: int) -> Path:
    return out / PARTIAL_DIR / f"chunk-{chunk:06d}.npy"


def _render_chunk(chunk: _Chunk) -> tuple[int, int]:
    """Worker side: render, write the images, then the record file that marks the chunk done."""
    spec = chunk.spec
    indices = list(range(chunk.start, chunk.stop))
    images, records = make_images(spec.seed, indices, spec.options)
    if spec.image_format == "png":
        for index, image, record in zip(indices, images, records, strict=True):
            name = image_name(index, spec.count)
            write_bytes_atomic(
                spec.out / IMAGE_DIR / name, encode_rgb_png(image, spec.png_compress_level)
            )
            record["file"] = f"{IMAGE_DIR}/{name}"
    else:
        with (
            atomic_path(_chunk_array_path(spec.out, chunk.index)) as tmp,
            open(tmp, "wb") as handle,
        ):
            np.save(handle, images)
    write_bytes_atomic(
        _chunk_record_path(spec.out, chunk.index),
        json.dumps({"start": chunk.start, "stop": chunk.stop, "records": records}).encode(),
    )
    return chunk.index, len(indices)


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


def _prepare_folder(spec: BankSpec, overwrite: bool, resume: bool) -> None:
    """Refuse to clobber what a user already has; set up or validate the partial state."""
    out = spec.out
    if out.exists() and not out.is_dir():
        raise BankError(f"{out}: exists and is not a folder")
    partial = out / PARTIAL_DIR
    job_file = partial / "job.json"
    existing = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if existing and resume:
        if not job_file.is_file():
            if (out / MANIFEST).is_file():
                raise BankError(f"{out}: the bank is already complete; nothing to resume")
            raise BankError(f"{out}: no interrupted bank to resume (no {PARTIAL_DIR}/job.json)")
        previous = json.loads(job_file.read_text())
        if previous != spec.identity():
            changed = sorted(k for k in spec.identity() if previous.get(k) != spec.identity()[k])
            raise BankError(
                f"{out}: cannot resume, options differ from the interrupted run "
                f"({', '.join(changed)})"
            )
        for folder in (out, out / IMAGE_DIR, partial):
            remove_stale_temporaries(folder)
        return
    if existing:
        if not overwrite:
            raise BankError(
                f"{out}: folder is not empty ({len(existing)} entries); "
                "pass --overwrite to replace it or --resume to continue an interrupted run"
            )
        for name in OUTPUT_NAMES:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    try:
        (out / IMAGE_DIR if spec.image_format == "png" else out).mkdir(parents=True, exist_ok=True)
        partial.mkdir(exist_ok=True)
        write_bytes_atomic(job_file, json.dumps(spec.identity(), sort_keys=True).encode())
    except OSError as error:
        raise BankError(f"{out}: cannot write here ({error.strerror or error})") from error


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
    backend: str = "loky",
) -> BankSummary:
    """Render a bank into ``spec.out``; safe to interrupt and ``resume``.

    ``on_progress(n)`` is called with the number of images finished (already-done chunks are
    reported first, in one call) so the caller can drive a progress bar.
    """
    if spec.count < 1:
        raise BankError(f"{spec.out}: --count must be at least 1 (got {spec.count})")
    if spec.image_format not in FORMATS:
        raise BankError(f"{spec.out}: unknown format {spec.image_format!r} (png or h5)")
    started = time.perf_counter()
    _prepare_folder(spec, overwrite=overwrite, resume=resume)
    todo: list[_Chunk] = []
    reused = 0
    for chunk, (start, stop) in enumerate(chunk_ranges(spec.count)):
        if resume and _chunk_is_done(spec, chunk, start, stop):
            reused += stop - start
        else:
            todo.append(_Chunk(spec, chunk, start, stop))
    if on_progress and reused:
        on_progress(reused)
    for _, finished in run_unordered(_render_chunk, todo, jobs=jobs, backend=backend):
        if on_progress:
            on_progress(finished)
    # A worker killed mid-write (its chunk then reran elsewhere) leaves temporary files; every
    # chunk has finished now, so nothing is writing here any more.
    for folder in (spec.out, spec.out / IMAGE_DIR):
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
        blocks = (
            (start, np.load(_chunk_array_path(spec.out, chunk)))
            for chunk, (start, _) in enumerate(chunk_ranges(spec.count))
        )
        write_h5(spec.out / H5_NAME, manifest, spec.options.size, blocks)
    write_bytes_atomic(spec.out / MANIFEST, json.dumps(manifest, indent=1).encode())
    shutil.rmtree(spec.out / PARTIAL_DIR)
    return BankSummary(
        out=spec.out,
        images=spec.count,
        rendered=spec.count - reused,
        reused=reused,
        seconds=time.perf_counter() - started,
    )
