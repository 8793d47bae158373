"""``ipmix fractals generate`` and ``ipmix fractals render``."""

from __future__ import annotations

import functools
from pathlib import Path

import click
import numpy as np
from PIL import Image

from fractals import FractalOptions, render_record
from ipmix_cli import kernel_caches
from ipmix_cli.bank.format import load_manifest, read_bank_images
from ipmix_cli.commands import RunOptions
from ipmix_cli.commands.heap import frozen_heap
from ipmix_cli.errors import BankError, OutputError
from ipmix_cli.jobs.bank_job import BankSpec, generate_bank
from ipmix_cli.jobs.parallel import backend_session, resolve_backend
from ipmix_cli.jobs.remote_bank import check_remote_bank, generate_remote_bank
from ipmix_cli.remote.url import ObjectURL
from ipmix_cli.ui.contact_sheet import save_png_atomic
from ipmix_cli.ui.progress import LazyBar
from ipmix_cli.ui.sheets import bank_sheet
from ipmix_cli.ui.summaries import bank_line

PREVIEW_IMAGES = 64


def bank_spec(
    out: Path | ObjectURL,
    count: int = 1000,
    size: int = 256,
    points: int = 100_000,
    seed: int = 0,
    background: str = "plasma",
    image_format: str = "png",
    render: str = "patch",
    fractals_per_image: int = 1,
    instances: int = 1,
    blur: bool = False,
    flips: bool = True,
    min_fill: float | None = None,
    png_compression: int = 1,
) -> BankSpec:
    """The :class:`BankSpec` that ``ipmix fractals generate``'s options describe (defaults
    are the CLI's)."""
    option_values = {
        "size": size,
        "points": points,
        "background": background,
        "patch": render == "patch",
        "fractals_per_image": fractals_per_image,
        "instances": instances,
        "blur": blur,
        "flips": flips,
    }
    if min_fill is not None:
        option_values["min_fill"] = min_fill
    return BankSpec(
        out=out,
        count=count,
        seed=seed,
        options=FractalOptions(**option_values),
        image_format=image_format,
        png_compress_level=png_compression,
    )


def generate_fractals(spec: BankSpec, run: RunOptions, preview: Path | None = None) -> None:
    """``ipmix fractals generate``: render the bank, then an optional contact sheet."""
    kernel_caches.refresh()
    kernel_caches.skip_blas_probe()
    with frozen_heap():
        _generate_fractals(spec, run, preview)


def _generate_fractals(spec: BankSpec, run: RunOptions, preview: Path | None) -> None:
    backend = resolve_backend(run.backend, run.scheduler, default="threads")
    if isinstance(spec.out, ObjectURL):
        check_remote_bank(spec, spec.out, backend)  # before connecting to any cluster
    if preview is not None and preview.exists() and not run.overwrite:
        raise OutputError(preview, "preview file exists; pass --overwrite to replace it")
    with (
        LazyBar("fractals", enabled=not run.quiet) as bar,
        backend_session(backend, run.scheduler),
    ):

        def progress(n: int) -> None:
            if bar.bar is None:  # the first report comes once the checks have passed
                bar.start(spec.count)
            bar.update(n)

        options = {
            "jobs": run.jobs,
            "overwrite": run.overwrite,
            "resume": run.resume,
            "on_progress": progress,
            "backend": backend,
        }
        if isinstance(spec.out, ObjectURL):  # rendered locally, previewed, then uploaded
            sheet = None if preview is None else functools.partial(_save_preview, spec, preview)
            summary = generate_remote_bank(spec, spec.out, preview=sheet, **options)
        else:
            summary = generate_bank(spec, **options)
            if preview is not None:
                _save_preview(spec, preview, spec.out)
    if not run.quiet:
        click.echo(bank_line(summary, spec.options.size, spec.image_format, preview))


def _save_preview(spec: BankSpec, preview: Path, bank: Path) -> None:
    images = read_bank_images(bank, limit=PREVIEW_IMAGES)
    save_png_atomic(bank_sheet(images, cell=min(spec.options.size, 128)), preview)


def render_fractals(
    bank: Path,
    indices: tuple[int, ...],
    size: int | None,
    out: Path,
    overwrite: bool,
    quiet: bool = False,
) -> None:
    """``ipmix fractals render``: re-render chosen images from the bank's manifest, printing
    each file written (nothing with ``quiet``)."""
    kernel_caches.refresh()
    manifest = load_manifest(bank)
    records = manifest["records"]
    for index in indices:
        if index >= len(records):
            raise BankError(f"{bank}: no image {index} (the bank holds {len(records)})")
    out.mkdir(parents=True, exist_ok=True)
    for index in indices:
        target = out / f"{index:05d}.png"
        if target.exists() and not overwrite:
            raise OutputError(target, "exists; pass --overwrite to replace it")
        image = render_record(records[index], size=size)
        save_png_atomic(Image.fromarray(np.ascontiguousarray(image)), target)
        if not quiet:
            click.echo(str(target))
