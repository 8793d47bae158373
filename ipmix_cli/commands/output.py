"""``ipmix inspect``, ``ipmix verify`` and ``ipmix preview``: looking at what was made."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from ipmix_cli.errors import OutputError, ShardError
from ipmix_cli.jobs.augment_spec import human_bytes
from ipmix_cli.shards import check_output, inspect, verify
from ipmix_cli.sources import open_mixing_set
from ipmix_cli.ui.contact_sheet import contact_sheet, save_png_atomic


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
                f"images:    {info['count']} ({info['mode']}), {h}x{w} RGB uint8, stored "
                + _stored(info),
                f"shards:    {info['num_shards']} ({info['missing_shards']} missing)",
                f"bytes:     {human_bytes(info['bytes_on_disk'])} on disk",
                f"classes:   {len(names)}: {shown}",
                f"source:    {source.get('path', '?')} ({source.get('format', '?')})",
                f"seed:      {info.get('seed')}",
                f"config:    {json.dumps(config, sort_keys=True)}",
                f"skipped:   {len(info.get('skipped') or [])} files",
            ]
        )
    )


def verify_output(entry: Path, quick: bool, jobs: int = -1) -> None:
    """``ipmix verify``: one line per fault and a non-zero exit if there is any."""
    report = verify(entry, deep=not quick, jobs=jobs)
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    for fault in report.faults:
        click.echo(f"FAULT {fault}")
    if not report.ok:
        raise ShardError(entry, f"{len(report.faults)} fault(s) found")
    click.echo(
        f"ok: {report.count} images in {report.num_shards} shards, "
        f"{report.shards_checked} checked" + (" (structure only)" if quick else " (checksums)")
    )


def _stored(info: dict) -> str:
    codec = info.get("codec") or "raw"
    return f"jpeg q{info.get('quality')}" if codec == "jpeg" else codec


def _sample_rows(target: Path, count: int) -> tuple[list[np.ndarray], list[str]]:
    """About ``count`` pictures from rows spread evenly over the output (so several classes and
    copies show); in JSD mode each row contributes its clean image and both views side by side.
    Read through ``ShardReader``, which decodes JPEG and PNG rows as it does raw ones."""
    from ipmix_cli.readers import ShardReader

    jsd = ShardReader(target).mode == "jsd"
    views = ("clean", "images", "images2") if jsd else ("images",)
    with ShardReader(target, views=views) as reader:
        names = reader.class_names
        wanted = max(1, count // 3) if jsd else count
        rows = np.unique(np.linspace(0, len(reader) - 1, min(wanted, len(reader))).astype(int))
        batch = reader.read(rows)
    pictures: list[np.ndarray] = []
    captions: list[str] = []
    for k, label in enumerate(batch["labels"].tolist()):
        name = names[label] if label < len(names) else str(label)
        if jsd:
            pictures += [batch[d][k] for d in views]
            captions += [f"{name} clean", "view 1", "view 2"]
        else:
            pictures.append(batch["images"][k])
            captions.append(name)
    return pictures, captions


def preview_target(target: Path, out: Path, count: int, overwrite: bool) -> None:
    """``ipmix preview``: contact sheet of an augment output or of an image folder."""
    if out.exists() and not overwrite:
        raise OutputError(out, "exists; pass --overwrite to replace it")
    if target.is_dir():
        pictures = open_mixing_set(target, limit=count)
        captions = None
    else:
        check_output(target)  # one-line errors for a missing or broken output
        pictures, captions = _sample_rows(target, count)
    columns = 9 if captions and captions[0].endswith("clean") else 8
    save_png_atomic(contact_sheet(pictures, captions=captions, columns=columns, cell=128), out)
    click.echo(f"{len(pictures)} images -> {out}")
