"""``ipmix augment``: build the job's spec from the options, run it with a bar, print a line."""

from __future__ import annotations

from pathlib import Path

import click

from ipmix_cli import kernel_caches
from ipmix_cli.augment.config import IPMixConfig
from ipmix_cli.commands import RunOptions
from ipmix_cli.jobs.augment_job import preflight, run_augment
from ipmix_cli.jobs.augment_spec import AugmentSpec
from ipmix_cli.jobs.parallel import backend_session, resolve_backend
from ipmix_cli.ui.progress import LazyBar


def augment_spec(
    input_path: Path,
    mixing_set: Path,
    out: Path,
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
    split: str = "train",
    on_error: str = "fail",
) -> AugmentSpec:
    """The :class:`AugmentSpec` that ``ipmix augment``'s options describe: the preset's
    recipe with every option given overriding it (defaults are the CLI's)."""
    knobs = {
        "k": k,
        "t": t,
        "beta": beta,
        "severity": severity,
        "all_ops": all_ops,
        "patch_overflow": patch_overflow,
        "pre": pre,
        "size": size,
    }
    overrides = {name: value for name, value in knobs.items() if value is not None}
    return AugmentSpec(
        input=input_path,
        mixing_set=mixing_set,
        out=out,
        config=IPMixConfig.preset(preset, jsd=jsd, **overrides),
        copies=copies,
        seed=seed,
        shard_size=shard_size,
        compression=compression,
        input_format=input_format,
        on_error=on_error,
        split=split,
        labels_path=labels_path,
    )


def augment_dataset(spec: AugmentSpec, run: RunOptions) -> None:
    """``ipmix augment``: the main job, with a progress bar and a one-line summary."""
    kernel_caches.refresh()
    backend = resolve_backend(run.backend, run.scheduler, default="threads")
    if run.dry_run:
        _dry_run(spec)
        return
    with (
        LazyBar("augment", enabled=not run.quiet) as bar,
        backend_session(backend, run.scheduler),
    ):
        summary = run_augment(
            spec,
            jobs=run.jobs,
            overwrite=run.overwrite,
            resume=run.resume,
            on_start=bar.start,
            on_progress=bar.update,
            backend=backend,
        )
    for path, reason in summary.skipped:
        click.echo(f"skipped {path}: {reason}", err=True)
    click.echo(summary.line())


def _dry_run(spec: AugmentSpec) -> None:
    """Every check the real run makes (it runs the same preflight), then the plan."""
    plan = preflight(spec)
    config = spec.config
    h, w = config.size
    recipe = f"preset {config.preset_name}" if config.preset_name else "customised recipe"
    click.echo(
        f"dry run: {len(plan.source)} images ({plan.source.format}, "
        f"{len(plan.source.class_names)} classes) x {spec.copies} copies = {plan.rows} rows of "
        f"{h}x{w}x3 in {plan.num_shards} shards (~{plan.rows * spec.row_bytes() / 1e6:.1f} MB), "
        f"mixing set of {len(plan.pictures)} pictures, {recipe}; nothing written"
    )
