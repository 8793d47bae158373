"""What each CLI command does, as plain functions (progress bars and summaries included).

Kept apart from ``cli.py`` so option parsing stays thin and every command is callable from
Python with the same behaviour.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click
import numpy as np
from PIL import Image

from fractals import FractalOptions, render_record
from ipmix_cli.atomic import atomic_path
from ipmix_cli.augment.config import IPMixConfig
from ipmix_cli.augment_job import AugmentError, AugmentSpec, open_inputs, plan_shards, run_augment
from ipmix_cli.bank import BankError, BankSpec, generate_bank, load_manifest, read_bank_images
from ipmix_cli.parallel import backend_session, resolve_backend
from ipmix_cli.preview import contact_sheet
from ipmix_cli.progress import progress_bar
from ipmix_cli.shards import inspect, open_output, verify
from ipmix_cli.sources import open_mixing_set

PREVIEW_IMAGES = 64


def save_png_atomic(image: Image.Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def _check_preview_target(preview: Path | None, overwrite: bool) -> None:
    if preview is not None and preview.exists() and not overwrite:
        raise BankError(f"{preview}: preview file exists; pass --overwrite to replace it")


def generate_fractals(
    out: Path,
    count: int,
    size: int,
    points: int,
    seed: int,
    jobs: int,
    background: str,
    image_format: str,
    render: str,
    fractals_per_image: int,
    instances: int,
    blur: bool,
    flips: bool,
    min_fill: float | None,
    png_compression: int,
    preview: Path | None,
    overwrite: bool,
    resume: bool,
    quiet: bool,
    backend: str | None = None,
    scheduler: str | None = None,
) -> None:
    """``ipmix fractals generate``: render the bank, then an optional contact sheet."""
    if overwrite and resume:
        raise BankError(f"{out}: choose one of --overwrite and --resume")
    backend = resolve_backend(backend, scheduler)
    _check_preview_target(preview, overwrite)
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
    spec = BankSpec(
        out=out,
        count=count,
        seed=seed,
        options=FractalOptions(**option_values),
        image_format=image_format,
        png_compress_level=png_compression,
    )
    with (
        backend_session(backend, scheduler),
        progress_bar(count, "fractals", enabled=not quiet) as bar,
    ):
        summary = generate_bank(
            spec,
            jobs=jobs,
            overwrite=overwrite,
            resume=resume,
            on_progress=bar.update,
            backend=backend,
        )
    if preview is not None:
        images = read_bank_images(out, limit=PREVIEW_IMAGES)
        save_png_atomic(contact_sheet(images, columns=8, cell=min(size, 128)), preview)
    reused = f", {summary.reused} reused from the interrupted run" if summary.reused else ""
    click.echo(
        f"{summary.images} fractals ({size}x{size}, {image_format}) in {out}: "
        f"{summary.rendered} rendered in {summary.seconds:.1f} s "
        f"({summary.rate:.0f} images/s){reused}" + (f"; preview {preview}" if preview else "")
    )


def render_fractals(
    bank: Path, indices: tuple[int, ...], size: int | None, out: Path, overwrite: bool
) -> None:
    """``ipmix fractals render``: re-render chosen images from the bank's manifest."""
    manifest = load_manifest(bank)
    records = manifest["records"]
    for index in indices:
        if index >= len(records):
            raise BankError(f"{bank}: no image {index} (the bank holds {len(records)})")
    out.mkdir(parents=True, exist_ok=True)
    for index in indices:
        target = out / f"{index:05d}.png"
        if target.exists() and not overwrite:
            raise BankError(f"{target}: exists; pass --overwrite to replace it")
        image = render_record(records[index], size=size)
        save_png_atomic(Image.fromarray(np.ascontiguousarray(image)), target)
        click.echo(str(target))


def _config_from_options(
    preset: str, size: tuple[int, int] | None, jsd: bool, **knobs: Any
) -> IPMixConfig:
    overrides = {name: value for name, value in knobs.items() if value is not None}
    if size is not None:
        overrides["size"] = size
    return IPMixConfig.preset(preset, jsd=jsd, **overrides)


def augment_dataset(
    input_path: Path,
    mixing_set: Path,
    out: Path,
    copies: int,
    preset: str,
    size: tuple[int, int] | None,
    jsd: bool,
    seed: int,
    jobs: int,
    shard_size: int | None,
    compression: str,
    k: int | None,
    t: int | None,
    beta: float | None,
    severity: float | None,
    all_ops: bool | None,
    patch_overflow: str | None,
    pre: str | None,
    input_format: str | None,
    labels_path: Path | None,
    split: str,
    on_error: str,
    resume: bool,
    overwrite: bool,
    dry_run: bool,
    quiet: bool,
    backend: str | None = None,
    scheduler: str | None = None,
) -> None:
    """``ipmix augment``: the main job, with a progress bar and a one-line summary."""
    backend = resolve_backend(backend, scheduler, default="threads")
    config = _config_from_options(
        preset,
        size,
        jsd,
        k=k,
        t=t,
        beta=beta,
        severity=severity,
        all_ops=all_ops,
        patch_overflow=patch_overflow,
        pre=pre,
    )
    spec = AugmentSpec(
        input=input_path,
        mixing_set=mixing_set,
        out=out,
        config=config,
        copies=copies,
        seed=seed,
        shard_size=shard_size,
        compression=compression,
        input_format=input_format,
        on_error=on_error,
        split=split,
        labels_path=labels_path,
    )
    if dry_run:
        source, pictures = open_inputs(spec)
        rows = len(source) * copies
        shards = plan_shards(rows, spec.rows_per_shard())
        h, w = config.size
        click.echo(
            f"dry run: {len(source)} images ({source.format}, {len(source.class_names)} classes) x "
            f"{copies} copies = {rows} rows of {h}x{w}x3 in {len(shards)} shards "
            f"(~{rows * h * w * 3 * config.n_views / 1e6:.1f} MB), mixing set of "
            f"{len(pictures)} pictures, preset {preset}; nothing written"
        )
        return
    bar = progress_bar(0, "augment", enabled=not quiet)

    def start(total: int, done: int) -> None:
        bar.reset(total=total)
        bar.update(done)

    with bar, backend_session(backend, scheduler):
        summary = run_augment(
            spec,
            jobs=jobs,
            overwrite=overwrite,
            resume=resume,
            on_start=start,
            on_progress=bar.update,
            backend=backend,
        )
    for path, reason in summary.skipped:
        click.echo(f"skipped {path}: {reason}", err=True)
    click.echo(summary.line())


def inspect_output(entry: Path, as_json: bool) -> None:
    """``ipmix inspect``: a readable summary, or the full record as JSON."""
    info = inspect(entry)
    if as_json:
        click.echo(json.dumps(info, indent=2, sort_keys=True))
        return
    h, w, _ = info["image_shape"]
    config = info.get("config") or {}
    names = info["class_names"]
    shown = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
    source = info.get("source") or {}
    click.echo(
        "\n".join(
            [
                f"file:      {info['path']}",
                f"images:    {info['count']} ({info['mode']}), {h}x{w} RGB uint8",
                f"shards:    {info['num_shards']} ({info['missing_shards']} missing)",
                f"bytes:     {info['bytes_on_disk'] / 1e6:.1f} MB on disk",
                f"classes:   {len(names)}: {shown}",
                f"source:    {source.get('path', '?')} ({source.get('format', '?')})",
                f"seed:      {info.get('seed')}",
                f"config:    {json.dumps(config, sort_keys=True)}",
                f"skipped:   {len(info.get('skipped') or [])} files",
            ]
        )
    )


def verify_output(entry: Path, quick: bool) -> None:
    """``ipmix verify``: one line per fault and a non-zero exit if there is any."""
    report = verify(entry, deep=not quick)
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    for fault in report.faults:
        click.echo(f"FAULT {fault}")
    if not report.ok:
        raise AugmentError(f"{entry}: {len(report.faults)} fault(s) found")
    click.echo(
        f"ok: {report.count} images in {report.num_shards} shards, "
        f"{report.shards_checked} checked" + (" (structure only)" if quick else " (checksums)")
    )


def _sample_rows(output: Any, count: int) -> tuple[list[np.ndarray], list[str]]:
    """About ``count`` pictures from rows spread evenly over the output (so several classes and
    copies show); in JSD mode each row contributes its clean image and both views side by side."""
    names = output.class_names
    wanted = max(1, count // 3) if output.mode == "jsd" else count
    rows = np.unique(np.linspace(0, len(output) - 1, min(wanted, len(output))).astype(int))
    pictures: list[np.ndarray] = []
    captions: list[str] = []
    for row in rows.tolist():
        label = int(output.labels[row])
        name = names[label] if label < len(names) else str(label)
        if output.mode == "jsd":
            pictures += [output.dataset(d)[row] for d in ("clean", "images", "images2")]
            captions += [f"{name} clean", "view 1", "view 2"]
        else:
            pictures.append(output.images[row])
            captions.append(name)
    return pictures, captions


def preview_target(target: Path, out: Path, count: int, overwrite: bool) -> None:
    """``ipmix preview``: contact sheet of an augment output or of an image folder."""
    if out.exists() and not overwrite:
        raise AugmentError(f"{out}: exists; pass --overwrite to replace it")
    if target.is_dir():
        pictures = open_mixing_set(target, limit=count)
        captions = None
    else:
        with open_output(target) as output:
            pictures, captions = _sample_rows(output, count)
    columns = 9 if captions and captions[0].endswith("clean") else 8
    save_png_atomic(contact_sheet(pictures, captions=captions, columns=columns, cell=128), out)
    click.echo(f"{len(pictures)} images -> {out}")


def _demo_dataset(folder: Path, per_class: int = 20, size: int = 32) -> None:
    """A tiny 10-class image folder made in code: oriented gratings, one angle per class,
    random phase, frequency and colours, so classes are visibly different and need no download."""
    from fractals.rng import new_state, uniform

    names = [f"angle{c * 18:03d}" for c in range(10)]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    for c, name in enumerate(names):
        (folder / name).mkdir(parents=True, exist_ok=True)
        angle = np.deg2rad(c * 18)
        for i in range(per_class):
            state = new_state(12345, c, i)
            freq, phase = 0.25 + 0.3 * uniform(state), 6.283 * uniform(state)
            low = np.array([uniform(state) for _ in range(3)]) * 120
            high = 135 + np.array([uniform(state) for _ in range(3)]) * 120
            wave = 0.5 + 0.5 * np.sin(freq * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
            image = low + wave[..., None] * (high - low)
            Image.fromarray(image.astype(np.uint8)).save(folder / name / f"{i:03d}.png")


def run_demo(out: Path, jobs: int, overwrite: bool) -> None:
    """``ipmix demo``: bank -> augment -> verify -> preview on a data set made in code."""
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise AugmentError(f"{out}: folder is not empty; pass --overwrite to replace the demo")
    out.mkdir(parents=True, exist_ok=True)
    bank, dataset, entry = out / "bank", out / "dataset", out / "augmented.h5"
    click.echo(
        "(the very first run compiles the numba kernels, about a minute on 2 cores; they are "
        "cached for every later run)"
    )
    click.echo(f"[1/4] rendering a 64-image fractal bank into {bank}")
    spec = BankSpec(
        out=bank, count=64, seed=0, options=dataclasses.replace(FractalOptions(), size=128)
    )
    with progress_bar(spec.count, "fractals") as bar:
        generate_bank(spec, jobs=jobs, overwrite=True, on_progress=bar.update)
    save_png_atomic(
        contact_sheet(read_bank_images(bank), columns=8, cell=128), out / "bank-preview.png"
    )
    click.echo(f"[2/4] writing a 200-image, 10-class demo data set into {dataset}")
    if dataset.exists():
        import shutil

        shutil.rmtree(dataset)
    _demo_dataset(dataset)
    click.echo(f"[3/4] IPMix (CIFAR preset, JSD, 2 copies) into {entry}")
    augment_dataset(
        input_path=dataset,
        mixing_set=bank,
        out=entry,
        copies=2,
        preset="cifar",
        size=None,
        jsd=True,
        seed=0,
        jobs=jobs,
        shard_size=128,
        compression="none",
        k=None,
        t=None,
        beta=None,
        severity=None,
        all_ops=None,
        patch_overflow=None,
        pre=None,
        input_format=None,
        labels_path=None,
        split="train",
        on_error="fail",
        resume=False,
        overwrite=True,
        dry_run=False,
        quiet=False,
    )
    click.echo(f"[4/4] verifying and previewing {entry}")
    verify_output(entry, quick=False)
    preview_target(entry, out / "augmented-preview.png", 32, overwrite=True)
    click.echo(
        f"done. Bank: {bank} (sheet {out / 'bank-preview.png'}); shards: {entry} "
        f"(sheet {out / 'augmented-preview.png'}). Read them with h5py: "
        f"h5py.File('{entry}')['images']"
    )
