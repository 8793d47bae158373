"""``ipmix inspect``, ``ipmix verify`` and ``ipmix preview``: looking at what was made."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import click
import numpy as np

from ipmix_cli.bank.format import MANIFEST, read_bank_images
from ipmix_cli.errors import IpmixError, OutputError, ShardError
from ipmix_cli.remote.url import ObjectURL, is_remote
from ipmix_cli.shards import check_output, inspect, verify
from ipmix_cli.shards.layout import shard_dir
from ipmix_cli.sources import open_mixing_set
from ipmix_cli.ui.captions import augment_captions
from ipmix_cli.ui.contact_sheet import Protected, check_sheet_path, contact_sheet, save_png_atomic
from ipmix_cli.ui.sheets import bank_sheet, plan_augment_sheet
from ipmix_cli.ui.summaries import verify_line
from ipmix_cli.ui.words import count as count_of
from ipmix_cli.ui.words import human_bytes


def inspect_output(entry: Path | ObjectURL, as_json: bool) -> None:
    """``ipmix inspect``: a readable summary, or the full record as JSON. An ``s3://`` entry
    is downloaded alone: its shards' sizes come from one listing."""
    if isinstance(entry, ObjectURL):
        from ipmix_cli.remote.mirror import inspect_remote

        info = inspect_remote(entry)
    else:
        info = inspect(entry)
    if as_json:
        click.echo(json.dumps(info, indent=2, sort_keys=True))
        return
    h, w, _ = info["image_shape"]
    config = info.get("config") or {}
    names = info["class_names"]
    labels = info["class_labels"]
    pairs = zip(names[:10], labels[:10], strict=True)
    shown = ", ".join(n if lab == n else f"{n} ({lab})" for n, lab in pairs)
    shown += " ..." if len(names) > 10 else ""
    source = info.get("source") or {}
    click.echo(
        "\n".join(
            [
                f"file:      {info['path']}",
                f"images:    {info['count']} ({info['mode']}), {h}x{w} RGB uint8, stored "
                + _stored(info),
                f"shards:    {info['num_shards']} ({info['missing_shards']} missing)",
                f"bytes:     {human_bytes(info['bytes_on_disk'])} on disk",
                f"classes:   {len(names)}: {shown}",
                f"source:    {source.get('path', '?')} ({source.get('format', '?')})",
                f"seed:      {info.get('seed')}",
                f"config:    {json.dumps(config, sort_keys=True)}",
                f"skipped:   {count_of(len(info.get('skipped') or []), 'file')}",
            ]
        )
    )


def verify_output(
    entry: Path | ObjectURL, quick: bool, jobs: int = -1, quiet: bool = False
) -> None:
    """``ipmix verify``: one line per fault and a non-zero exit if there is any. ``quiet``
    drops the "ok" line and the fault list; the error line still names the first fault.
    An ``s3://`` entry's quick check downloads no shard (one listing, one HEAD a shard); its
    deep check downloads one shard at a time (a few ahead), deleting each once checked."""
    if isinstance(entry, ObjectURL):
        from ipmix_cli.remote.mirror import verify_remote

        report = verify_remote(entry, deep=not quick, jobs=jobs)
    else:
        report = verify(entry, deep=not quick, jobs=jobs)
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    if not quiet:
        for fault in report.faults:
            click.echo(f"FAULT {fault}")
    if not report.ok:
        n = len(report.faults)
        first = f"; first: {report.faults[0]}" if quiet and report.faults else ""
        raise ShardError(entry, f"{count_of(n, 'fault')} found{first}")
    if not quiet:
        click.echo(verify_line(report.count, report.num_shards, report.shards_checked, quick))


def _stored(info: dict) -> str:
    codec = info.get("codec") or "raw"
    return f"jpeg q{info.get('quality')}" if codec == "jpeg" else codec


def _augment_sheet(
    target: Path, count: int, before_read: Callable[[Sequence[int]], None] | None = None
) -> tuple[list[np.ndarray], list[str], int, int]:
    """The pictures and captions of an augment output's sheet, its columns and its group size
    (see :func:`~ipmix_cli.ui.sheets.plan_augment_sheet`). Captions come from the rows'
    stored ``source_index`` and ``copy_index``, not from the plan, so they say what the file
    holds. Read through ``ShardReader``, which decodes JPEG and PNG rows as it does raw ones.
    ``before_read(rows)`` is called with the rows to be read before they are (an ``s3://``
    output's mirror fetches their shards then)."""
    from ipmix_cli.readers import ShardReader

    with ShardReader(target) as probe:
        jsd, num_sources, copies = probe.mode == "jsd", probe.num_sources, probe.copies
    plan = plan_augment_sheet(num_sources, copies, count, jsd)
    views = ("clean", "images", "images2") if jsd else ("images",)
    rows = plan.rows(num_sources)
    if before_read is not None:
        before_read(rows)
    with ShardReader(target, views=views, extras=("source_index", "copy_index")) as reader:
        names = reader.class_names
        batch = reader.read(rows)
    per_source = len(plan.copies)
    pictures: list[np.ndarray] = []
    captions: list[str] = []
    for first in range(0, len(batch["labels"]), per_source):
        block = range(first, first + per_source)
        name = class_caption(int(batch["labels"][first]), names)
        copy_numbers = [int(batch["copy_index"][k]) for k in block]
        captions += augment_captions(int(batch["source_index"][first]), name, copy_numbers, jsd)
        if jsd:
            pictures.append(batch["clean"][first])
            for k in block:
                pictures += [batch["images"][k], batch["images2"][k]]
        else:
            pictures += [batch["images"][k] for k in block]
    return pictures, captions, plan.columns, plan.group


def class_caption(label: int, names: Sequence[str]) -> str:
    """What a sheet calls a row's class: its name; its number when the output records no names;
    and for a label no class has (a damaged or hand-edited shard: negative, or past the last
    class) the number and that it is out of range, never some other class's name (a negative
    index would silently pick one from the end of the list)."""
    if 0 <= label < len(names):
        return names[label]
    if label >= 0 and not names:
        return str(label)
    return f"{label}: out of range"


def _protected_inputs(target: Path) -> list[Protected]:
    """What a sheet of local ``target`` must not be written over or into, even with
    ``--overwrite``: the entry file and its shard folder, or the bank or image folder read."""
    if target.is_dir():
        kind = "bank" if (target / MANIFEST).is_file() else "image folder"
        return [Protected(target, f"inside {target}, the {kind} being previewed")]
    return [
        Protected(target, "the output being previewed"),
        Protected(shard_dir(target), f"inside {shard_dir(target)}, the shards being previewed"),
    ]


def preview_target(
    target: Path | ObjectURL,
    out: Path | ObjectURL,
    count: int,
    overwrite: bool,
    quiet: bool = False,
) -> None:
    """``ipmix preview``: contact sheet of an augment output (grouped by source, captioned with
    source, class and copy) or of an image folder or bank (captioned with each index). An
    ``s3://`` output's entry is downloaded, then only the shards holding the sheet's rows; the
    sheet itself is always a local file."""
    if is_remote(out):
        raise OutputError(str(out), "the sheet is written locally; give a local --out path")
    if not is_remote(target) and not target.exists():
        raise IpmixError(target, "does not exist")
    protected = [] if isinstance(target, ObjectURL) else _protected_inputs(target)
    final = check_sheet_path(out, overwrite, protected)
    if isinstance(target, ObjectURL):
        from ipmix_cli.remote.mirror import mirrored

        with mirrored(target) as mirror:
            fetch_rows = mirror.for_reading()
            pictures, captions, columns, group = _augment_sheet(mirror.entry, count, fetch_rows)
        sheet = contact_sheet(pictures, captions=captions, columns=columns, cell=128, group=group)
    elif target.is_dir():
        if (target / MANIFEST).is_file():  # a bank: its own order, the indices render takes
            pictures = read_bank_images(target, limit=count)
        else:
            pictures = open_mixing_set(target, limit=count)
        sheet = bank_sheet(pictures, cell=128)
    else:
        check_output(target)  # one-line errors for a missing or broken output
        pictures, captions, columns, group = _augment_sheet(target, count)
        sheet = contact_sheet(pictures, captions=captions, columns=columns, cell=128, group=group)
    save_png_atomic(sheet, final, shown=out)
    if not quiet:
        click.echo(f"{count_of(len(pictures), 'image')} -> {out}")
