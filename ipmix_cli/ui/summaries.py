"""The one-line summaries long commands end with, worded in one place.

A run that did no work (a resume of a finished output) says so instead of printing a rate of
zero; a run that did some reports the rate of what it made, not of what it reused.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ipmix_cli.ui.words import count, human_bytes, rate

if TYPE_CHECKING:  # the summaries' modules import this one (lazily); no cycle at run time
    from ipmix_cli.jobs.augment_spec import AugmentSummary
    from ipmix_cli.jobs.bank_job import BankSummary


def _all(n: int, word: str) -> str:
    """ "the 1 shard was" / "all 12 shards were": what a nothing-to-do line says is done."""
    return f"the {count(n, word)} was" if n == 1 else f"all {count(n, word)} were"


def augment_line(summary: AugmentSummary) -> str:
    """``ipmix augment`` / ``export``'s last line: rows, shards, bytes, what was reused, time
    and rate, or "nothing to do" when every shard was already complete."""
    skipped = (
        f", {count(len(summary.skipped), 'unreadable file')} skipped" if summary.skipped else ""
    )
    made = f"{count(summary.images, 'image')} in {count(summary.shards, 'shard')}"
    size = human_bytes(summary.bytes)
    if summary.computed_shards == 0:
        return (
            f"nothing to do: {_all(summary.shards, 'shard')} already complete "
            f"({made}, {size}, {summary.reused_shards} reused){skipped} -> {summary.out}"
        )
    computed = summary.images * summary.computed_shards / max(summary.shards, 1)
    speed = rate(computed, summary.seconds)
    reused = f", {summary.reused_shards} reused" if summary.reused_shards else ""
    return (
        f"{made} ({size}){reused} in {summary.seconds:.1f} s"
        + (f", {speed}" if speed else "")
        + f"{skipped} -> {summary.out}"
    )


def bank_line(
    summary: BankSummary, size: int, image_format: str, preview: Path | None = None
) -> str:
    """``ipmix fractals generate``'s last line: images, size, format, folder, what was rendered
    (with its rate) and what reused from an interrupted run."""
    head = f"{count(summary.images, 'fractal')} ({size}x{size} px, {image_format}) in {summary.out}"
    if summary.rendered == 0:
        body = f"nothing to do: {_all(summary.images, 'image')} already rendered"
    else:
        speed = rate(summary.rendered, summary.seconds)
        body = f"{summary.rendered} rendered in {summary.seconds:.1f} s" + (
            f" ({speed})" if speed else ""
        )
        if summary.reused:
            body += f", {summary.reused} reused from the interrupted run"
    return f"{head}: {body}" + (f"; preview {preview}" if preview else "")


def verify_line(images: int, shards: int, checked: int, quick: bool) -> str:
    """``ipmix verify``'s "ok" line."""
    how = " (structure only)" if quick else " (checksums)"
    return f"ok: {count(images, 'image')} in {count(shards, 'shard')}, {checked} checked{how}"
