"""``ipmix demo``: the whole pipeline on a data set made in code, so it needs no download."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
from pathlib import Path

import click
import numpy as np
from PIL import Image

from fractals import FractalOptions
from ipmix_cli import kernel_caches
from ipmix_cli.augment.config import IPMixConfig
from ipmix_cli.bank.format import read_bank_images
from ipmix_cli.commands import RunOptions
from ipmix_cli.commands.augment import augment_dataset
from ipmix_cli.commands.output import preview_target, verify_output
from ipmix_cli.errors import OutputError
from ipmix_cli.fs.probe import path_problem
from ipmix_cli.jobs.augment_spec import AugmentSpec
from ipmix_cli.jobs.bank_job import BankSpec, generate_bank
from ipmix_cli.ui.contact_sheet import save_png_atomic
from ipmix_cli.ui.progress import progress_bar
from ipmix_cli.ui.sheets import bank_sheet


def _demo_dataset(folder: Path, per_class: int = 20, size: int = 32) -> None:
    """A tiny 10-class image folder made in code: oriented gratings, one angle per class,
    random phase, frequency and colours, so classes are visibly different and need no download.
    The sines come from ``fractals.detmath``, not numpy's (whose SIMD loops differ by CPU), so
    the data set, and so the whole demo, is the same on every machine."""
    from fractals import detmath
    from fractals.rng import new_state, uniform

    names = [f"angle{c * 18:03d}" for c in range(10)]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    for c, name in enumerate(names):
        (folder / name).mkdir(parents=True, exist_ok=True)
        angle = c * 18 * (math.pi / 180)
        ca, sa = detmath.cos(angle), detmath.sin(angle)
        for i in range(per_class):
            state = new_state(12345, c, i)
            freq, phase = 0.25 + 0.3 * uniform(state), 6.283 * uniform(state)
            low = np.array([uniform(state) for _ in range(3)]) * 120
            high = 135 + np.array([uniform(state) for _ in range(3)]) * 120
            t = freq * (xx * ca + yy * sa) + phase  # +, * only: the same bits everywhere
            wave = 0.5 + 0.5 * np.array([detmath.sin(v) for v in t.ravel().tolist()])
            wave = wave.reshape(t.shape)
            image = low + wave[..., None] * (high - low)
            Image.fromarray(image.astype(np.uint8)).save(folder / name / f"{i:03d}.png")


def run_demo(out: Path, jobs: int, overwrite: bool, quiet: bool = False) -> None:
    """``ipmix demo``: bank -> augment -> verify -> preview on a data set made in code.
    ``quiet``: no steps, bars or summaries; errors still end the run with one line."""
    kernel_caches.refresh()
    problem = path_problem(out)
    if problem is not None:
        raise OutputError(out, problem)
    if os.path.lexists(out) and not out.is_dir():
        raise OutputError(out, "exists and is not a folder; name a folder for the demo")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputError(out, "folder is not empty; pass --overwrite to replace the demo")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(out, f"cannot create the folder ({error.strerror or error})") from None
    bank, dataset, entry = out / "bank", out / "dataset", out / "augmented.h5"
    bank_preview, augmented_preview = out / "bank-preview.png", out / "augmented-preview.png"

    def say(text: str) -> None:
        if not quiet:
            click.echo(text)

    say(
        "(the very first run compiles the numba kernels, about a minute on 2 cores; they are "
        "cached for every later run)"
    )
    say(f"[1/4] rendering a 64-image fractal bank into {bank}")
    spec = BankSpec(
        out=bank, count=64, seed=0, options=dataclasses.replace(FractalOptions(), size=128)
    )
    with progress_bar(spec.count, "fractals", enabled=not quiet) as bar:
        generate_bank(spec, jobs=jobs, overwrite=True, on_progress=bar.update)
    save_png_atomic(bank_sheet(read_bank_images(bank), cell=128), bank_preview)
    say(f"[2/4] writing a 200-image, 10-class demo data set into {dataset}")
    if dataset.exists():
        shutil.rmtree(dataset)
    _demo_dataset(dataset)
    say(f"[3/4] IPMix (CIFAR preset, JSD, 2 copies) into {entry}")
    augment = AugmentSpec(
        input=dataset,
        mixing_set=bank,
        out=entry,
        config=IPMixConfig.preset("cifar", jsd=True),
        copies=2,
        shard_size=128,
    )
    augment_dataset(augment, RunOptions(jobs=jobs, overwrite=True, quiet=quiet))
    say(f"[4/4] verifying and previewing {entry}")
    verify_output(entry, quick=False, quiet=quiet)
    preview_target(entry, augmented_preview, 32, overwrite=True, quiet=quiet)
    say(
        f"done. Bank: {bank} (sheet {bank_preview}); shards: {entry} "
        f"(sheet {augmented_preview}). Read them with h5py: "
        f"h5py.File('{entry}')['images']"
    )
