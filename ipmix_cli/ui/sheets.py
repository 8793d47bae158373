"""Which images a preview sheet shows and how they are grouped: pure planning, no files.

An augment output's sheet is laid out by source: each group of cells is one input image, its
original first where the output holds it (the clean view of a ``--jsd`` output), then its
copies, so a glance shows what augmentation did to it. A bank's sheet is laid out by index.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ipmix_cli.ui.captions import bank_captions
from ipmix_cli.ui.contact_sheet import contact_sheet

SHEET_COLUMNS = 8
"""Cells per sheet row to aim for (a group of cells is never split over two rows)."""
MAX_COPIES_SHOWN = {False: 7, True: 4}
"""Copies shown per source: standard 7 (8 cells with room to spare), JSD 4 (1 + 8 cells)."""


@dataclass(frozen=True)
class AugmentSheetPlan:
    """The sources and copies a sheet of an augment output shows, and its grid."""

    sources: list[int]
    copies: list[int]
    group: int
    """Cells per source: the copies, plus the clean image and a second view per copy (JSD)."""
    columns: int

    def rows(self, num_sources: int) -> np.ndarray:
        """Output rows to read, source by source and copy by copy (rows are copy-major:
        ``copy * num_sources + source``)."""
        return np.array(
            [c * num_sources + s for s in self.sources for c in self.copies], dtype=np.int64
        )


def plan_augment_sheet(num_sources: int, copies: int, count: int, jsd: bool) -> AugmentSheetPlan:
    """About ``count`` cells of an output of ``copies`` x ``num_sources`` rows: sources spread
    evenly over the input (so several classes show), each with up to
    :data:`MAX_COPIES_SHOWN` of its copies."""
    shown = list(range(max(1, min(copies, MAX_COPIES_SHOWN[jsd]))))
    group = 1 + 2 * len(shown) if jsd else len(shown)
    wanted = max(1, min(num_sources, count // group))
    sources = np.unique(np.linspace(0, num_sources - 1, wanted).astype(int)).tolist()
    per_row = max(1, SHEET_COLUMNS // group)
    return AugmentSheetPlan(
        sources=sources,
        copies=shown,
        group=group,
        columns=group * min(per_row, len(sources)),
    )


def bank_sheet(images: Sequence[np.ndarray], cell: int, first: int = 0) -> Image.Image:
    """A bank's contact sheet, each image captioned with its index (``first`` onwards), the
    number ``ipmix fractals render --index`` takes."""
    captions = bank_captions(range(first, first + len(images)))
    return contact_sheet(images, captions=captions, columns=SHEET_COLUMNS, cell=cell)
