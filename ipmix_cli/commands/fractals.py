"""``ipmix fractals generate`` and ``ipmix fractals render``."""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

import click
import numpy as np
from PIL import Image

from fractals import FractalError, FractalOptions, render_record
from ipmix_cli import kernel_caches
from ipmix_cli.bank.format import MANIFEST, load_manifest, read_bank_images
from ipmix_cli.commands import RunOptions
from ipmix_cli.commands.heap import frozen_heap
from ipmix_cli.errors import BankError, OutputError
from ipmix_cli.fs.probe import lies_within, real_path
from ipmix_cli.fs.tree import make_folders, remove_empty_folders
from ipmix_cli.jobs.bank_job import LOCK_FILE, OUTPUT_NAMES, BankSpec, generate_bank
from ipmix_cli.jobs.estimate import free_bytes
from ipmix_cli.jobs.parallel import backend_session, resolve_backend
from ipmix_cli.jobs.remote_bank import check_remote_bank, generate_remote_bank
from ipmix_cli.remote.url import ObjectURL
from ipmix_cli.ui.contact_sheet import Protected, check_sheet_path, save_png_atomic
from ipmix_cli.ui.progress import LazyBar
from ipmix_cli.ui.sheets import bank_sheet
from ipmix_cli.ui.summaries import bank_line
from ipmix_cli.ui.words import human_bytes

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
    remote = isinstance(spec.out, ObjectURL)
    if remote:
        check_remote_bank(spec, spec.out, backend)  # before connecting to any cluster
    sheet = None
    if preview is not None:  # checked where it will land once the bank's folders exist
        inside = [] if remote else [Protected(spec.out, f"inside {spec.out}, the bank's folder")]
        sheet = check_sheet_path(preview, run.overwrite, inside)
    if not remote:
        check_bank_space(spec, run)
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
        if remote:  # rendered locally, previewed, then uploaded
            save = None if sheet is None else functools.partial(_save_preview, spec, sheet, preview)
            summary = generate_remote_bank(spec, spec.out, preview=save, **options)
        else:
            summary = generate_bank(spec, **options)
            if sheet is not None:
                _save_preview(spec, sheet, preview, spec.out)
    if not run.quiet:
        click.echo(bank_line(summary, spec.options.size, spec.image_format, preview))


def _save_preview(spec: BankSpec, sheet: Path, preview: Path, bank: Path) -> None:
    """Write the bank's sheet at ``sheet`` (where ``preview``, the path given, was checked to
    land); a failure says the bank itself is complete, so that the user makes the sheet again
    (``ipmix preview``) instead of rendering the bank again."""
    images = read_bank_images(bank, limit=PREVIEW_IMAGES)
    try:
        save_png_atomic(bank_sheet(images, cell=min(spec.options.size, 128)), sheet, preview)
    except OutputError as error:
        raise type(error)(
            f"{error}; the bank in {spec.out} is complete, only its preview is missing "
            "(make it with ipmix preview)"
        ) from None


PNG_SHARE = {"plasma": 1 / 8, "black": 0.0}
"""The least share of the raw pixels a PNG bank's files take, by background: plasma banks
measured 0.29 (1024 px) to 0.9 (16 px) of raw at every --png-compression; a black background
compresses away (0.005 at 256 px), so nothing is counted for its pictures."""
RECORD_BYTES = 1000
"""The least bytes each image's record takes: about 1.1 KB in the manifest, as much again in
the chunk records beside it until the manifest is written."""


def bank_need(spec: BankSpec) -> int:
    """A lower bound of the bytes a bank takes at its peak, to refuse one that cannot fit.

    HDF5: the raw pixels twice (the chunks' .npy files are still there while ``fractals.h5``,
    uncompressed, is written). PNG: stored (level 0) files hold every raw byte; compressed ones
    at least :data:`PNG_SHARE` of them. Plus :data:`RECORD_BYTES` an image. A lower bound on
    purpose: the check must never refuse a bank that would have fitted."""
    raw = spec.count * spec.options.size * spec.options.size * 3
    if spec.image_format == "h5":
        pictures = 2 * raw
    elif spec.png_compress_level == 0:
        pictures = raw
    else:
        pictures = int(raw * PNG_SHARE.get(spec.options.background, 0.0))
    return pictures + RECORD_BYTES * spec.count


def _allocated_bytes(path: Path) -> int:
    """Bytes the files under ``path`` take on disk (what removing them gives back)."""
    if path.is_symlink() or not path.exists():
        return 0
    if not path.is_dir():
        return path.stat().st_blocks * 512
    total = 0
    for folder, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_blocks * 512
    return total


def check_bank_space(spec: BankSpec, run: RunOptions) -> None:
    """Refuse, before any work, a local bank whose :func:`bank_need` exceeds the free space
    where it goes (augment checks the same way): a full disk found after the first chunk costs
    the render time and leaves an unfinished bank. ``--overwrite`` counts the bank it removes as
    free; ``--resume`` counts what the interrupted run left as written. A folder the job will
    refuse anyway (not a folder, not empty without either option) is left to that message."""
    if run.no_space_check:
        return
    spec.validate()  # a --count out of range is told as such, not as a size
    out = Path(spec.out)
    if out.exists() and not out.is_dir():
        return
    refused = out.is_dir() and not (run.overwrite or run.resume)
    if refused and any(p.name != LOCK_FILE for p in out.iterdir()):
        return
    existing = sum(_allocated_bytes(out / name) for name in OUTPUT_NAMES) if out.is_dir() else 0
    need = bank_need(spec) - (existing if run.resume else 0)
    folder, free = free_bytes(out)
    free += existing if run.overwrite else 0
    if need > free:
        context = click.get_current_context(silent=True)
        option = context is not None and "no_space_check" in context.params
        raise OutputError(
            out,
            f"the bank needs at least {human_bytes(need)} but {folder} has {human_bytes(free)} "
            f"free; free space{',' if option else ' or'} write elsewhere"
            + (", or pass --no-space-check" if option else ""),
        )


def render_fractals(
    bank: Path,
    indices: tuple[int, ...],
    size: int | None,
    out: Path,
    overwrite: bool,
    quiet: bool = False,
) -> None:
    """``ipmix fractals render``: re-render chosen images from the bank's manifest, printing
    each file written (nothing with ``quiet``).

    Everything that can be checked is, before the first image is drawn: the indices (a repeated
    one is rendered once), ``out`` (a folder, outside the bank), every file to write (none there
    unless ``overwrite``) and every record (drawn at 16 px with one point, which runs all of
    the renderer's own checks in a moment), so a bad option never leaves some images written.
    A damaged record's message names the manifest and the image. A folder the command made
    and could not fill is removed."""
    kernel_caches.refresh()
    manifest_path = bank / MANIFEST if bank.is_dir() else bank
    bank_folder = bank if bank.is_dir() else bank.parent
    records = load_manifest(bank)["records"]
    if not isinstance(records, list):
        raise BankError(manifest_path, f"'records' is not a list (got {type(records).__name__})")
    wanted = list(dict.fromkeys(indices))
    for index in wanted:
        if index >= len(records):
            raise BankError(f"{bank}: no image {index} (the bank holds {len(records)})")
    if os.path.lexists(out) and not out.is_dir():
        raise OutputError(out, "exists and is not a folder")
    # Checked and written where the files land (``missing/../r`` names ``r`` only once
    # ``missing`` exists); named as given.
    real = real_path(out)
    if lies_within(real, real_path(bank_folder)):
        raise OutputError(out, f"is inside the bank {bank_folder}; write the images elsewhere")
    names = {index: f"{index:05d}.png" for index in wanted}
    for name in names.values():
        if os.path.isdir(real / name):
            raise OutputError(out / name, "exists and is not a file")
        if os.path.lexists(real / name) and not overwrite:
            raise OutputError(out / name, "exists; pass --overwrite to replace it")
    for index in wanted:
        _drawn(manifest_path, index, records[index], size=16, points=1)
    try:
        created = make_folders(real)
    except OSError as error:
        raise OutputError(out, f"cannot create the folder ({error.strerror or error})") from None
    written = 0
    try:
        for index, name in names.items():
            image = _drawn(manifest_path, index, records[index], size=size)
            picture = Image.fromarray(np.ascontiguousarray(image))
            try:
                save_png_atomic(picture, real / name, shown=out / name)
            except OutputError as error:
                kept = f"; the {written} written before it are kept" if written else ""
                raise type(error)(f"{error}{kept}") from None
            written += 1
            if not quiet:
                click.echo(str(out / name))
    except BaseException:
        remove_empty_folders(real, created)
        raise


def _drawn(
    manifest: Path, index: int, record: object, size: int | None, points: int | None = None
) -> np.ndarray:
    """``render_record``, its complaint about a damaged record prefixed with the manifest and
    the image it is about (the renderer, below ipmix_cli, knows neither)."""
    try:
        return render_record(record, size=size, points=points)
    except FractalError as error:
        raise BankError(manifest, f"image {index}: {error}") from None
