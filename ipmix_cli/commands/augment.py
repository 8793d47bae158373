"""``ipmix augment``: build the job's spec from the options, run it with a bar, print a line."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import click

import ipmix_cli
from ipmix_cli import kernel_caches
from ipmix_cli.augment.config import IPMixConfig
from ipmix_cli.commands import RunOptions
from ipmix_cli.commands.heap import frozen_heap
from ipmix_cli.cores import resolve_jobs
from ipmix_cli.errors import printable
from ipmix_cli.jobs.augment_job import preflight, run_augment
from ipmix_cli.jobs.augment_spec import AugmentSpec
from ipmix_cli.jobs.estimate import estimate_output, free_bytes
from ipmix_cli.jobs.parallel import backend_session, resolve_backend
from ipmix_cli.jobs.remote_output import output_for
from ipmix_cli.remote.url import ObjectURL
from ipmix_cli.ui.progress import LazyBar
from ipmix_cli.ui.words import count, human_bytes


def augment_spec(
    input_path: Path,
    mixing_set: Path | ObjectURL,
    out: Path | ObjectURL,
    copies: int = 1,
    preset: str = "cifar",
    size: tuple[int, int] | None = None,
    jsd: bool = False,
    seed: int = 0,
    shard_size: int | None = None,
    compression: str = "none",
    k: int | None = None,
    t: int | None = None,
    beta: float | None = None,
    severity: float | None = None,
    all_ops: bool | None = None,
    patch_overflow: str | None = None,
    pre: str | None = None,
    input_format: str | None = None,
    labels_path: Path | None = None,
    classes: Path | None = None,
    split: str = "train",
    on_error: str = "fail",
    codec: str = "raw",
    quality: int = 90,
    fingerprint: str = "stat",
    resize: str | None = None,
    resize_side: int | None = None,
) -> AugmentSpec:
    """The :class:`AugmentSpec` that ``ipmix augment``'s options describe: the preset's
    recipe with every option given overriding it (defaults are the CLI's). ``shard_size`` is
    a number of rows, or ``("rows", n)`` / ``("bytes", n)`` as the CLI parses it."""
    knobs = {
        "k": k,
        "t": t,
        "beta": beta,
        "severity": severity,
        "all_ops": all_ops,
        "patch_overflow": patch_overflow,
        "pre": pre,
        "size": size,
        "resize": resize,
        "resize_side": resize_side,
    }
    overrides = {name: value for name, value in knobs.items() if value is not None}
    rows, nbytes = _shard_rows_or_bytes(shard_size)
    return AugmentSpec(
        input=input_path,
        mixing_set=mixing_set,
        out=out,
        config=IPMixConfig.preset(preset, jsd=jsd, **overrides),
        copies=copies,
        seed=seed,
        shard_size=rows,
        shard_bytes=nbytes,
        compression=compression,
        input_format=input_format,
        on_error=on_error,
        split=split,
        labels_path=labels_path,
        classes=classes,
        codec=codec,
        quality=quality,
        fingerprint=fingerprint,
    )


def export_spec(
    input_path: Path,
    out: Path | ObjectURL,
    preset: str = "imagenet",
    size: tuple[int, int] | None = None,
    resize_side: int | None = None,
    **options: Any,
) -> AugmentSpec:
    """The clean export's spec (``ipmix export``): one copy, resized and centre-cropped, no
    mixing set. The imagenet preset's default shorter side is torchvision's evaluation
    habit, ``Resize(256)`` then ``CenterCrop(224)`` (size * 8 / 7); cifar's is the size."""
    config = IPMixConfig.preset(preset, **({"size": size} if size else {}))
    if resize_side is None and preset == "imagenet":
        resize_side = min(config.size) * 8 // 7
    spec = augment_spec(
        input_path, Path(), out, preset=preset, size=size, resize_side=resize_side, **options
    )
    return dataclasses.replace(spec, clean=True, mixing_set=None)


def _shard_rows_or_bytes(value: int | tuple[str, int] | None) -> tuple[int | None, int | None]:
    if value is None:
        return None, None
    if isinstance(value, tuple):
        kind, n = value
        return (n, None) if kind == "rows" else (None, n)
    return int(value), None


def augment_dataset(spec: AugmentSpec, run: RunOptions) -> None:
    """``ipmix augment``: the main job, with a progress bar and a one-line summary."""
    kernel_caches.refresh()
    kernel_caches.skip_blas_probe()
    with frozen_heap():
        _augment_dataset(spec, run)


def _augment_dataset(spec: AugmentSpec, run: RunOptions) -> None:
    backend = resolve_backend(run.backend, run.scheduler, default="threads")
    if run.dry_run:
        _dry_run(spec, run, backend)
        return
    name = "export" if spec.clean else "augment"
    with (
        LazyBar("scan", unit="files", enabled=not run.quiet) as scan,
        LazyBar(name, enabled=not run.quiet) as bar,
        backend_session(backend, run.scheduler),
    ):
        summary = run_augment(
            spec,
            jobs=run.jobs,
            overwrite=run.overwrite,
            resume=run.resume,
            on_start=lambda total, done: (scan.close(), bar.start(total, done)),
            on_progress=bar.update,
            backend=backend,
            scan=scan,
            space_check=not run.no_space_check,
        )
    for path, reason in summary.skipped:  # warnings: printed even with --quiet
        click.echo(f"skipped {printable(path)}: {reason}", err=True)
    if not run.quiet:
        click.echo(summary.line())


def _dry_run(spec: AugmentSpec, run: RunOptions, backend: str) -> None:
    """Every check the real run makes (it runs the same preflight, with the same --overwrite
    and --resume, so it refuses what the run would), then the plan: rows, shards, output bytes
    for the codec, the free space, and a time from a timed sample."""
    jobs = run.jobs
    started = time.perf_counter()
    startup = started - ipmix_cli.STARTED  # imports: a real run pays them again
    with LazyBar("scan", unit="files", enabled=not run.quiet) as scan:
        plan = preflight(spec, jobs=jobs, progress=scan, overwrite=run.overwrite, resume=run.resume)
    config = spec.config
    h, w = config.size
    mixing = plan.mixing
    preparing = time.perf_counter() - started  # the real run pays this too: scan, mixing set
    estimate = estimate_output(
        spec, plan.source, mixing, plan.rows, plan.num_shards, timed=True, jobs=jobs,
        backend=backend,
    )  # fmt: skip
    fixed = startup + preparing + estimate.warmup
    estimate = dataclasses.replace(estimate, seconds=(estimate.seconds or 0.0) + fixed)
    output = output_for(spec.out)  # an s3:// output stages its shards in flight here
    local = output.local_need(estimate.bytes, plan.num_shards, resolve_jobs(jobs))
    folder, free = free_bytes(output.entry)
    if spec.clean:
        recipe = f"clean export (resize, centre crop), {spec.codec}"
    else:
        recipe = f"preset {config.preset_name}" if config.preset_name else "customised recipe"
        recipe += f", mixing set of {count(plan.mixing_print['count'], 'picture')}, {spec.codec}"
    if spec.codec == "jpeg":
        recipe += f" q{spec.quality}"
    fits = "fits" if local <= free else "DOES NOT FIT (the run would refuse to start)"
    if local < estimate.bytes:
        fits = f"{human_bytes(local)} staged at a time, {fits}"
    click.echo(
        f"dry run: {count(len(plan.source), 'image')} ({plan.source.format}, "
        f"{count(len(plan.source.class_names), 'class')}) x {count(spec.copies, 'copy')} = "
        f"{count(plan.rows, 'row')} of {h}x{w}x3 in {count(plan.num_shards, 'shard')}, {recipe}\n"
        f"output: {estimate.describe()} on {jobs_text(jobs)}\n"
        f"free:   {human_bytes(free)} at {folder}: {fits}\n"
        "nothing written"
    )


def jobs_text(jobs: int) -> str:
    return count(resolve_jobs(jobs), "worker")
