"""Progress reporting shared by every long-running command (bar with rate and ETA)."""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress_bar(total: int, description: str, unit: str = "img", enabled: bool = True) -> tqdm:
    """A tqdm bar on stderr that shows count, rate and ETA.

    ``initial`` progress (resumed work) is added by the caller with ``update`` so the rate only
    reflects work done in this run.
    """
    return tqdm(
        total=total,
        desc=description,
        unit=unit,
        unit_scale=False,
        dynamic_ncols=True,
        file=sys.stderr,
        disable=not enabled,
        smoothing=0.1,
    )
