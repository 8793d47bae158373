"""Command-line entry point: parses options and calls library functions, nothing more."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ipmix_cli.errors import IpmixError, one_line

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
            raise
        except KeyboardInterrupt:
            click.echo(
                "\ninterrupted: finished work is kept; rerun with --resume to continue", err=True
            )
            sys.exit(130)

    return wrapper


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


@click.group()
@click.version_option(package_name="ipmix")
def main() -> None:
    """ipmix: fractal mixing sets and pre-materialised IPMix augmentation."""


@main.group()
def fractals() -> None:
    """Make and re-render banks of synthetic fractal images (the IPMix mixing set)."""


@fractals.command("generate")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Bank folder.")
@click.option("--count", default=1000, show_default=True, type=click.IntRange(min=1))
@click.option("--size", default=256, show_default=True, type=click.IntRange(16, 4096))
@click.option("--points", default=100_000, show_default=True, type=click.IntRange(min=100))
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**64 - 1))
@click.option(
    "--jobs", default=-1, show_default=True, type=int, callback=check_jobs, help="-1: all cores."
)
@backend_options(
    ("threads", "loky", "dask"),
    "threads",
    "threads: one process, the renderer runs without the GIL (nothing outlives the command). "
    "loky: local worker processes.",
)
@click.option(
    "--background", default="plasma", show_default=True, type=click.Choice(["plasma", "black"])
)
@click.option(
    "--format", "image_format", default="png", show_default=True, type=click.Choice(["png", "h5"])
)
@click.option(
    "--render",
    default="patch",
    show_default=True,
    type=click.Choice(["patch", "graded"]),
    help="patch: each point stamps a random 3x3 subset (the reference's look).",
)
@click.option("--fractals-per-image", default=1, show_default=True, type=click.IntRange(1, 8))
@click.option(
    "--instances",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Images per IFS system (jittered variants).",
)
@click.option(
    "--blur/--no-blur", default=False, show_default=True, help="Random small Gaussian blur."
)
@click.option(
    "--flips/--no-flips", default=True, show_default=True, help="Random flips/transposes."
)
@click.option(
    "--min-fill", default=None, type=click.FloatRange(0.0, 1.0), help="Reject sparser systems."
)
@click.option("--png-compression", default=1, show_default=True, type=click.IntRange(0, 9))
@click.option("--preview", type=click.Path(path_type=Path), help="Write a contact sheet PNG here.")
@click.option("--overwrite", is_flag=True, help="Replace an existing bank in --out.")
@click.option("--resume", is_flag=True, help="Finish an interrupted bank in --out.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@friendly_errors
def fractals_generate(preview: Path | None, **opts: Any) -> None:
    """Render a bank of IFS fractals: PNG folder (loads as an image folder) or one HDF5 file."""
    from ipmix_cli.commands import RunOptions
    from ipmix_cli.commands.fractals import bank_spec, generate_fractals

    run = RunOptions(**{name: opts.pop(name) for name in RUN_OPTIONS if name in opts})
    generate_fractals(bank_spec(**opts), run, preview)


@fractals.command("render")
@click.argument("bank", type=click.Path(path_type=Path, exists=True))
@click.option("--index", "indices", multiple=True, required=True, type=click.IntRange(min=0))
@click.option(
    "--size", default=None, type=click.IntRange(16, 8192), help="Default: the bank's size."
)
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--overwrite", is_flag=True)
@friendly_errors
def fractals_render(
    bank: Path, indices: tuple[int, ...], size: int | None, out: Path, overwrite: bool
) -> None:
    """Re-render images of BANK from its manifest, e.g. at a higher resolution."""
    from ipmix_cli.commands.fractals import render_fractals

    render_fractals(bank, indices, size, out, overwrite)


@main.command()
@click.option(
    "--out", default=Path("ipmix-demo"), show_default=True, type=click.Path(path_type=Path)
)
@click.option("--jobs", default=-1, show_default=True, type=int, callback=check_jobs)
@click.option("--overwrite", is_flag=True, help="Replace an earlier demo in --out.")
@friendly_errors
def demo(out: Path, jobs: int, overwrite: bool) -> None:
    """Run the whole pipeline on built-in data (no download) and say where the results are."""
    from ipmix_cli.commands.demo import run_demo

    run_demo(out, jobs, overwrite)


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
                callback=parse_shard_size,
                help="Per shard: rows (4096) or raw image bytes (256MiB). Default: 16-256 MiB, "
                "about 64 shards per job.",
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
                help="Default: detected.",
            ),
            click.option(
                "--labels",
                "labels_path",
                type=click.Path(path_type=Path),
                help="Labels .npy for a .npy input.",
            ),
            click.option(
                "--split", default="train", show_default=True, type=click.Choice(["train", "test"])
            ),
            click.option(
                "--on-error", default="fail", show_default=True, type=click.Choice(["fail", "skip"])
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
            click.option("--quiet", is_flag=True, help="No progress bar."),
        ]
    ):
        command = option(command)
    return command


@main.command()
@click.option(
    "--input", "input_path", required=True, type=click.Path(path_type=Path), help="Data set."
)
@click.option(
    "--mixing-set",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder of pictures (e.g. a fractal bank) or an HDF5 bank.",
)
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="Entry file, e.g. data.h5."
)
@click.option("--copies", default=1, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--preset", default="cifar", show_default=True, type=click.Choice(["cifar", "imagenet"])
)
@click.option("--size", callback=parse_size, help="Output size, 32 or HxW (default: the preset's).")
@click.option("--jsd", is_flag=True, help="Store the clean image and two views per sample.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**64 - 1))
@click.option(
    "--jobs", default=-1, show_default=True, type=int, callback=check_jobs, help="-1: all cores."
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
@click.option("--k", type=click.IntRange(1, 64), help="Chains mixed together.")
@click.option("--t", type=click.IntRange(0, 64), help="Max operations per chain.")
@click.option(
    "--beta", type=click.FloatRange(min=0, min_open=True), help="Pixel-mixing weight shape."
)
@click.option("--severity", type=click.FloatRange(min=0.1), help="Image-op strength.")
@click.option("--all-ops/--default-ops", default=None, help="Add the 5 ImageNet-C-overlapping ops.")
@click.option(
    "--patch-overflow", type=click.Choice(["wrap", "clip"]), help="wrap: the reference's quirk."
)
@click.option("--pre", type=click.Choice(["cifar", "imagenet", "none"]), help="Pre-transform.")
@click.option(
    "--resize",
    type=click.Choice(["center", "exact"]),
    help="Inputs not of --size (cifar/none pre-transforms): center: shorter side to "
    "--resize-side, then centre crop (default); exact: refuse them.",
)
@click.option(
    "--resize-side",
    type=click.IntRange(8, 1 << 15),
    help="Shorter side before the centre crop (default: the output's shorter side).",
)
@input_and_run_options
@friendly_errors
def augment(**opts: Any) -> None:
    """Pre-materialise IPMix-augmented copies of a data set into verified HDF5 shards."""
    from ipmix_cli.commands import RunOptions
    from ipmix_cli.commands.augment import augment_dataset, augment_spec

    run = RunOptions(**{name: opts.pop(name) for name in RUN_OPTIONS if name in opts})
    augment_dataset(augment_spec(**opts), run)


@main.command()
@click.option(
    "--input", "input_path", required=True, type=click.Path(path_type=Path), help="Data set."
)
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="Entry file, e.g. val.h5."
)
@click.option(
    "--preset",
    default="imagenet",
    show_default=True,
    type=click.Choice(["cifar", "imagenet"]),
    help="Default size and resize: imagenet 224 from a 256 shorter side; cifar 32 from 32.",
)
@click.option("--size", callback=parse_size, help="Output size, 224 or HxW.")
@click.option(
    "--resize-side",
    type=click.IntRange(8, 1 << 15),
    help="Shorter side before the centre crop (imagenet default: size * 8 / 7, 256 for 224).",
)
@click.option(
    "--jobs", default=-1, show_default=True, type=int, callback=check_jobs, help="-1: all cores."
)
@output_options
@input_and_run_options
@friendly_errors
def export(**opts: Any) -> None:
    """Store a data set unaugmented (shorter-side resize, centre crop, one copy) in the same
    format as ``augment``, e.g. the validation set, so one reader serves both.

    Example: ipmix export --input val/ --out val.h5 --codec jpeg
    """
    from ipmix_cli.commands import RunOptions
    from ipmix_cli.commands.augment import augment_dataset, export_spec

    run = RunOptions(**{name: opts.pop(name) for name in RUN_OPTIONS if name in opts})
    augment_dataset(export_spec(**opts), run)


@main.command("inspect")
@click.argument("entry", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the full record as JSON.")
@friendly_errors
def inspect_command(entry: Path, as_json: bool) -> None:
    """Counts, classes, image size, bytes and config of an augment output."""
    from ipmix_cli.commands.output import inspect_output

    inspect_output(entry, as_json)


@main.command()
@click.argument("entry", type=click.Path(path_type=Path))
@click.option("--quick", is_flag=True, help="Skip re-hashing the data (structure only).")
@click.option(
    "--jobs", default=-1, show_default=True, type=int, callback=check_jobs, help="-1: all cores."
)
@friendly_errors
def verify(entry: Path, quick: bool, jobs: int) -> None:
    """Check every shard: present, checksums, shapes, labels. Exit 1 on any fault."""
    from ipmix_cli.commands.output import verify_output

    verify_output(entry, quick, jobs)


@main.command()
@click.argument("target", type=click.Path(path_type=Path, exists=True))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="PNG to write.")
@click.option("--count", default=32, show_default=True, type=click.IntRange(1, 1024))
@click.option("--overwrite", is_flag=True)
@friendly_errors
def preview(target: Path, out: Path, count: int, overwrite: bool) -> None:
    """A labelled contact sheet of an augment output (FILE.h5) or an image folder / bank."""
    from ipmix_cli.commands.output import preview_target

    preview_target(target, out, count, overwrite)
