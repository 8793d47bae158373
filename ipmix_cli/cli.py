"""Command-line entry point: parses options and calls library functions, nothing more."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ipmix_cli.errors import IpmixError, one_line
from ipmix_cli.ui.help_text import EPILOGS, QUIET, SHARD_SIZE, preset_default


class Location(click.ParamType):
    """A local path or an ``s3://bucket/key`` URL (``click.Path`` would mangle the URL)."""

    name = "path or s3://"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        from ipmix_cli.remote.url import parse_location

        if not isinstance(value, str):
            return value
        try:
            return parse_location(value)
        except IpmixError as error:
            self.fail(error.problem, param, ctx)


LOCATION = Location()

RUN_OPTIONS = (
    "jobs",
    "backend",
    "scheduler",
    "resume",
    "overwrite",
    "dry_run",
    "quiet",
    "no_space_check",
)
"""Options that say how to run a job rather than what it makes (``RunOptions``)."""


def friendly_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into one-line messages and Ctrl-C into a resumable stop."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except IpmixError as error:
            raise click.ClickException(str(error)) from None
        except Exception as error:
            if _is_fractal_error(error):
                raise click.ClickException(one_line(error)) from None
            if _worker_died(error):
                raise click.ClickException(
                    "a worker process died (killed by a signal, or by the system for lack of "
                    "memory); finished work is kept: rerun with --resume to continue"
                ) from None
            raise
        except KeyboardInterrupt:
            # The newline ends a progress bar's line; with --quiet there is none.
            start = "" if kwargs.get("quiet") else "\n"
            click.echo(
                f"{start}interrupted: finished work is kept; rerun with --resume to continue",
                err=True,
            )
            sys.exit(130)

    return wrapper


def run() -> None:
    """The ``ipmix`` command: :func:`main`, and once a Ctrl-C has been reported (exit 130) an
    immediate exit. The hint is printed and every finished file is in place by then; the
    interpreter's own shutdown would only free objects, and a second Ctrl-C that landed inside
    h5py while it held its lock left that shutdown waiting on the lock forever."""
    try:
        main()
    except SystemExit as stop:
        if stop.code == 130:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
        raise


def _worker_died(error: BaseException) -> bool:
    """joblib/loky's TerminatedWorkerError (a worker killed, e.g. by the OOM killer), known by
    name: importing joblib here would load it for every command."""
    kind = type(error)
    return kind.__name__ == "TerminatedWorkerError" and kind.__module__.startswith("joblib")


def _is_fractal_error(error: Exception) -> bool:
    """``fractals.FractalError``, looked up only if the fractals package is loaded: importing it
    here would load numba for every ``--help``."""
    module = sys.modules.get("fractals.errors")
    return module is not None and isinstance(error, module.FractalError)


def check_jobs(_ctx: click.Context, _param: click.Parameter, value: int) -> int:
    """joblib's convention, minus the meaningless 0."""
    if value == 0:
        raise click.BadParameter("0 workers cannot run anything; use -1 for all cores")
    return value


def backend_options(
    choices: tuple[str, ...], default: str, help_text: str
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--backend`` and ``--scheduler``, for the commands that fan work out to workers."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        command = click.option(
            "--scheduler",
            metavar="ADDRESS",
            help="Join this dask scheduler, e.g. tcp://host:8786 (implies --backend dask; "
            "--jobs is then ignored, every worker of the cluster is used).",
        )(command)
        return click.option(
            "--backend",
            type=click.Choice(list(choices)),
            help=f"{help_text} dask: a dask cluster, --scheduler's or a local one of --jobs "
            f"worker processes. [default: {default}]",
        )(command)

    return decorate


def quiet_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--quiet``, the same on every command that prints progress or summaries."""
    return click.option("--quiet", is_flag=True, help=QUIET)(command)


@click.group(epilog=EPILOGS["main"])
@click.version_option(package_name="ipmix")
def main() -> None:
    """ipmix: fractal mixing sets and pre-materialised IPMix augmentation."""


@main.group(epilog=EPILOGS["fractals"])
def fractals() -> None:
    """Make and re-render banks of synthetic fractal images (the IPMix mixing set)."""


@fractals.command("generate", epilog=EPILOGS["generate"])
@click.option(
    "--out",
    "out",
    required=True,
    type=LOCATION,
    help="Bank folder (PNG images in OUT/fractals/, or OUT/fractals.h5, plus a manifest); "
    "with --format h5 also a bucket prefix, s3://bucket/prefix/bank.",
)
@click.option(
    "--count", default=1000, show_default=True, type=click.IntRange(min=1), help="Images."
)
@click.option(
    "--size",
    default=256,
    show_default=True,
    type=click.IntRange(16, 4096),
    help="Side of each square image, px.",
)
@click.option(
    "--points",
    default=100_000,
    show_default=True,
    type=click.IntRange(min=100),
    help="Chaos-game points per fractal (more: denser, slower).",
)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=click.IntRange(0, 2**64 - 1),
    help="Root seed: image i depends only on (seed, i) and the options.",
)
@click.option(
    "--jobs",
    default=-1,
    show_default=True,
    type=int,
    callback=check_jobs,
    help="Workers; -1: all cores. The bytes do not depend on it.",
)
@backend_options(
    ("threads", "loky", "dask"),
    "threads",
    "threads: one process, the renderer runs without the GIL (nothing outlives the command). "
    "loky: local worker processes.",
)
@click.option(
    "--background",
    default="plasma",
    show_default=True,
    type=click.Choice(["plasma", "black"]),
    help="What the fractal is drawn on: a random diamond-square plasma, or black.",
)
@click.option(
    "--format",
    "image_format",
    default="png",
    show_default=True,
    type=click.Choice(["png", "h5"]),
    help="png: one file per image (loads as an image folder); h5: one HDF5 file.",
)
@click.option(
    "--render",
    default="patch",
    show_default=True,
    type=click.Choice(["patch", "graded"]),
    help="patch: each point stamps a random 3x3 subset (the reference's look); graded: "
    "brightness by hit count.",
)
@click.option(
    "--fractals-per-image",
    default=1,
    show_default=True,
    type=click.IntRange(1, 8),
    help="Fractals composited on one background.",
)
@click.option(
    "--instances",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Images per IFS system (jittered variants).",
)
@click.option(
    "--blur/--no-blur",
    default=False,
    show_default=True,
    help="Gaussian blur (sigma 0.5-1 px) on half the images.",
)
@click.option(
    "--flips/--no-flips", default=True, show_default=True, help="Random flips/transposes."
)
@click.option(
    "--min-fill",
    default=None,
    type=click.FloatRange(0.0, 1.0),
    help="Reject and resample systems lighting a smaller fraction of the pixels. [default: 0.05]",
)
@click.option(
    "--png-compression",
    default=1,
    show_default=True,
    type=click.IntRange(0, 9),
    help="Deflate level of the PNG files, libdeflate's (0: stored, 9: smallest and slowest).",
)
@click.option(
    "--preview",
    type=click.Path(path_type=Path),
    help="Also write a contact sheet of the first 64 images here, each captioned with its "
    "index (.png, or .jpg for a smaller file).",
)
@click.option(
    "--no-space-check",
    is_flag=True,
    help="Start even if the bank's estimated size exceeds the free space.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing bank in --out.")
@click.option("--resume", is_flag=True, help="Finish an interrupted bank in --out.")
@quiet_option
@friendly_errors
def fractals_generate(preview: Path | None, **opts: Any) -> None:
    """Render a bank of IFS fractals: PNG folder (loads as an image folder) or one HDF5 file."""
    from ipmix_cli.commands import RunOptions
    from ipmix_cli.commands.fractals import bank_spec, generate_fractals

    run = RunOptions(**{name: opts.pop(name) for name in RUN_OPTIONS if name in opts})
    generate_fractals(bank_spec(**opts), run, preview)


@fractals.command("render", epilog=EPILOGS["render"])
@click.argument("bank", type=click.Path(path_type=Path, exists=True))
@click.option(
    "--index",
    "indices",
    multiple=True,
    required=True,
    type=click.IntRange(min=0),
    help="Image to re-render (repeat for several): the number under it on a bank preview, "
    "its file name in BANK/fractals/.",
)
@click.option(
    "--size",
    default=None,
    type=click.IntRange(16, 8192),
    help="Side in px (the same picture, more or less detail). [default: the bank's size]",
)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(path_type=Path),
    help="Output folder; image i becomes OUT/0000i.png.",
)
@click.option("--overwrite", is_flag=True, help="Replace images already in --out.")
@quiet_option
@friendly_errors
def fractals_render(
    bank: Path, indices: tuple[int, ...], size: int | None, out: Path, overwrite: bool, quiet: bool
) -> None:
    """Re-render images of BANK from its manifest, e.g. at a higher resolution."""
    from ipmix_cli.commands.fractals import render_fractals

    render_fractals(bank, indices, size, out, overwrite, quiet)


@main.command(epilog=EPILOGS["demo"])
@click.option(
    "--out",
    default=Path("ipmix-demo"),
    show_default=True,
    type=click.Path(path_type=Path),
    help="Folder for the bank, data set, shards and preview sheets.",
)
@click.option(
    "--jobs",
    default=-1,
    show_default=True,
    type=int,
    callback=check_jobs,
    help="Workers; -1: all cores.",
)
@click.option("--overwrite", is_flag=True, help="Replace an earlier demo in --out.")
@quiet_option
@friendly_errors
def demo(out: Path, jobs: int, overwrite: bool, quiet: bool) -> None:
    """Run the whole pipeline on built-in data (no download) and say where the results are."""
    from ipmix_cli.commands.demo import run_demo

    run_demo(out, jobs, overwrite, quiet)


def parse_size(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> tuple[int, int] | None:
    """``224`` or ``HxW`` (e.g. ``32x48``) -> (H, W)."""
    if value is None:
        return None
    parts = value.lower().split("x")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) not in (1, 2) or min(numbers) < 8:
        raise click.BadParameter(f"{value!r} is not a size like 32 or 32x48 (each side >= 8)")
    return (numbers[0], numbers[-1])


_BYTE_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}


def parse_shard_size(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> tuple[str, int] | None:
    """``4096`` (rows) or ``256MiB`` / ``1GB`` (raw image bytes) -> ("rows"|"bytes", n)."""
    if value is None:
        return None
    text = value.strip().lower().replace(" ", "")
    digits = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(digits) :]
    try:
        number = float(digits) if unit else int(digits)
    except ValueError:
        number = -1
    if number <= 0 or (unit and unit not in _BYTE_UNITS):
        raise click.BadParameter(
            f"{value!r} is not a shard size: a number of rows (4096) or of bytes (256MiB, 1GB)"
        )
    if not unit:
        return ("rows", int(number))
    return ("bytes", int(number * _BYTE_UNITS[unit]))


def output_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """How the rows are stored and checked, shared by ``augment`` and ``export``."""
    for option in reversed(
        [
            click.option(
                "--shard-size",
                metavar="ROWS|BYTES",
                callback=parse_shard_size,
                help=SHARD_SIZE,
            ),
            click.option(
                "--codec",
                default="raw",
                show_default=True,
                type=click.Choice(["raw", "jpeg", "png"]),
                help="How each image row is stored: raw uint8, or encoded (readers decode).",
            ),
            click.option(
                "--quality",
                default=90,
                show_default=True,
                type=click.IntRange(1, 100),
                help="JPEG quality (--codec jpeg).",
            ),
            click.option(
                "--fingerprint",
                default="stat",
                show_default=True,
                type=click.Choice(["stat", "full"]),
                help="How a folder input is identified for --resume: path, size, mtime and "
                "header per file (stat), or content hashes (full: reads every byte).",
            ),
            click.option(
                "--no-space-check",
                is_flag=True,
                help="Start even if the estimated output exceeds the free space.",
            ),
        ]
    ):
        command = option(command)
    return command


def input_and_run_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """How the input is read and the job run, shared by ``augment`` and ``export``."""
    for option in reversed(
        [
            click.option(
                "--input-format",
                type=click.Choice(["folder", "cifar", "npz", "npy", "hdf5"]),
                help="How to read --input. [default: detected from what --input holds]",
            ),
            click.option(
                "--labels",
                "labels_path",
                type=click.Path(path_type=Path),
                help="Labels .npy for a .npy input. [default: IMAGES_labels.npy beside it]",
            ),
            click.option(
                "--classes",
                type=click.Path(path_type=Path),
                help="Class folders of a folder input, in label order: a file with one folder "
                "per line (optionally followed by a human label, as in ImageNet's "
                "LOC_synset_mapping.txt) or JSON (a list, or {folder: id} / {folder: label}). "
                "Folders it does not list are left out. [default: every class folder, sorted]",
            ),
            click.option(
                "--split",
                default="train",
                show_default=True,
                type=click.Choice(["train", "test"]),
                help="Which part of a CIFAR input to read (other formats hold one split).",
            ),
            click.option(
                "--on-error",
                default="fail",
                show_default=True,
                type=click.Choice(["fail", "skip"]),
                help="An unreadable image in a folder input: fail: stop, naming it; skip: leave "
                "it out (listed on stderr and in the manifest).",
            ),
            click.option(
                "--resume",
                is_flag=True,
                help="Finish an interrupted run (only missing/bad shards).",
            ),
            click.option("--overwrite", is_flag=True, help="Replace existing output."),
            click.option(
                "--dry-run", is_flag=True, help="Check inputs and print the plan; write nothing."
            ),
            click.option("--quiet", is_flag=True, help=QUIET),
        ]
    ):
        command = option(command)
    return command


@main.command(epilog=EPILOGS["augment"])
@click.option(
    "--input",
    "input_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Data set: image folder (ROOT/CLASS/IMAGE), CIFAR pickles, .npz, .npy or HDF5.",
)
@click.option(
    "--mixing-set",
    required=True,
    type=LOCATION,
    help="Folder of pictures (e.g. a fractal bank) or an HDF5 bank, local or s3://.",
)
@click.option(
    "--out",
    required=True,
    type=LOCATION,
    help="Entry file, e.g. data.h5, or an object: s3://bucket/prefix/data.h5.",
)
@click.option(
    "--copies",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Augmented copies of every input image (epoch e of a reader uses copy e % copies).",
)
@click.option(
    "--preset",
    default="cifar",
    show_default=True,
    type=click.Choice(["cifar", "imagenet"]),
    help="The reference recipe for the data set: cifar (32 px, flip + padded crop, patches "
    "from the mixing picture) or imagenet (224 px, RandomResizedCrop + flip, patches from the "
    "mixing picture or the image). Each option below overrides one value of it.",
)
@click.option(
    "--size",
    metavar="PX|HxW",
    callback=parse_size,
    help="Output size in px, 32 or HxW (e.g. 32x48). " + preset_default("size"),
)
@click.option(
    "--jsd",
    is_flag=True,
    help="Store the clean image and two augmented views per row (for JSD consistency loss).",
)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=click.IntRange(0, 2**64 - 1),
    help="Root seed: the output bytes depend only on it, the input and the options.",
)
@click.option(
    "--jobs",
    default=-1,
    show_default=True,
    type=int,
    callback=check_jobs,
    help="Workers; -1: all cores. The bytes do not depend on it.",
)
@backend_options(
    ("threads", "loky", "dask"),
    "threads",
    "threads: one process, the kernels run without the GIL (no worker start-up, the data set "
    "read once). loky: local worker processes.",
)
@output_options
@click.option(
    "--compression",
    default="none",
    show_default=True,
    type=click.Choice(["none", "lzf", "gzip"]),
    help="HDF5 filter for --codec raw.",
)
@click.option(
    "--k",
    type=click.IntRange(1, 64),
    help="Chains mixed together. " + preset_default("k"),
)
@click.option(
    "--t",
    type=click.IntRange(0, 64),
    help="Most operations per chain (each draws 0..t). " + preset_default("t"),
)
@click.option(
    "--beta",
    type=click.FloatRange(min=0, min_open=True),
    help="Shape of the pixel-mixing weights (add and multiply rules). " + preset_default("beta"),
)
@click.option(
    "--severity",
    type=click.FloatRange(min=0.1),
    help="Image-op strength: each op draws its level from U(0.1, severity). "
    + preset_default("severity"),
)
@click.option(
    "--all-ops/--default-ops",
    default=None,
    help="All 15 image ops, or the default 10 (without the 5 that overlap ImageNet-C). "
    + preset_default("all_ops"),
)
@click.option(
    "--patch-overflow",
    type=click.Choice(["wrap", "clip"]),
    help="Patch-mixed values outside 0-255: wrap (the reference's uint8 cast) or clip. "
    + preset_default("patch_overflow"),
)
@click.option(
    "--pre",
    type=click.Choice(["cifar", "imagenet", "none"]),
    help="Pre-transform: cifar (flip + 4 px padded crop), imagenet (RandomResizedCrop + flip) "
    "or none. " + preset_default("pre"),
)
@click.option(
    "--resize",
    type=click.Choice(["center", "exact"]),
    help="Inputs not of --size (cifar/none pre-transforms): center: shorter side to "
    "--resize-side, then centre crop; exact: refuse them. " + preset_default("resize"),
)
@click.option(
    "--resize-side",
    type=click.IntRange(8, 1 << 15),
    help="Shorter side in px before the centre crop. [default: the output's shorter side, "
    "both presets]",
)
@input_and_run_options
@friendly_errors
def augment(**opts: Any) -> None:
    """Pre-materialise IPMix-augmented copies of a data set into verified HDF5 shards."""
    from ipmix_cli.commands import RunOptions
    from ipmix_cli.commands.augment import augment_dataset, augment_spec

    run = RunOptions(**{name: opts.pop(name) for name in RUN_OPTIONS if name in opts})
    augment_dataset(augment_spec(**opts), run)


@main.command(epilog=EPILOGS["export"])
@click.option(
    "--input",
    "input_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Data set: image folder (ROOT/CLASS/IMAGE), CIFAR pickles, .npz, .npy or HDF5.",
)
@click.option(
    "--out",
    required=True,
    type=LOCATION,
    help="Entry file, e.g. val.h5, or an object: s3://bucket/prefix/val.h5.",
)
@click.option(
    "--preset",
    default="imagenet",
    show_default=True,
    type=click.Choice(["cifar", "imagenet"]),
    help="Default size and resize: imagenet 224 px from a 256 px shorter side; cifar 32 px "
    "from 32 px.",
)
@click.option(
    "--size",
    metavar="PX|HxW",
    callback=parse_size,
    help="Output size in px, 224 or HxW (e.g. 224x160). " + preset_default("size"),
)
@click.option(
    "--resize-side",
    type=click.IntRange(8, 1 << 15),
    help="Shorter side in px before the centre crop. [default: cifar the output's shorter side, "
    "imagenet size * 8 / 7 (256 for 224)]",
)
@click.option(
    "--jobs",
    default=-1,
    show_default=True,
    type=int,
    callback=check_jobs,
    help="Workers; -1: all cores. The bytes do not depend on it.",
)
@output_options
@input_and_run_options
@friendly_errors
def export(**opts: Any) -> None:
    """Store a data set unaugmented (shorter-side resize, centre crop, one copy) in the same
    format as ``augment``, e.g. the validation set, so one reader serves both.
    """
    from ipmix_cli.commands import RunOptions
    from ipmix_cli.commands.augment import augment_dataset, export_spec

    run = RunOptions(**{name: opts.pop(name) for name in RUN_OPTIONS if name in opts})
    augment_dataset(export_spec(**opts), run)


@main.command("inspect", epilog=EPILOGS["inspect"])
@click.argument("entry", type=LOCATION)
@click.option("--json", "as_json", is_flag=True, help="Print the full record as JSON.")
@friendly_errors
def inspect_command(entry: Path, as_json: bool) -> None:
    """Counts, classes, image size, bytes and config of an augment output."""
    from ipmix_cli.commands.output import inspect_output

    inspect_output(entry, as_json)


@main.command(epilog=EPILOGS["verify"])
@click.argument("entry", type=LOCATION)
@click.option("--quick", is_flag=True, help="Skip re-hashing the data (structure only).")
@click.option(
    "--jobs",
    default=-1,
    show_default=True,
    type=int,
    callback=check_jobs,
    help="Worker processes re-hashing shards; -1: all cores.",
)
@quiet_option
@friendly_errors
def verify(entry: Path, quick: bool, jobs: int, quiet: bool) -> None:
    """Check every shard: present, checksums, shapes, labels. Exit 1 on any fault."""
    from ipmix_cli.commands.output import verify_output

    verify_output(entry, quick, jobs, quiet)


@main.command(epilog=EPILOGS["preview"])
@click.argument("target", type=LOCATION)
@click.option(
    "--out",
    required=True,
    type=LOCATION,
    help="Sheet to write: .png, or .jpg for a smaller file.",
)
@click.option(
    "--count",
    default=32,
    show_default=True,
    type=click.IntRange(1, 1024),
    help="About how many images the sheet shows.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
@quiet_option
@friendly_errors
def preview(target: Path, out: Path, count: int, overwrite: bool, quiet: bool) -> None:
    """A labelled contact sheet of an augment output (FILE.h5) or an image folder / bank.

    An output's sheet has one group of cells per source image: its original (the clean view of
    a --jsd output), then its copies, captioned with the source index, class and copy. A bank's
    images are captioned with their index, the number fractals render --index takes.
    """
    from ipmix_cli.commands.output import preview_target

    preview_target(target, out, count, overwrite, quiet)
