"""Keep numba's on-disk kernel caches honest, checked once when a command starts.

numba keys a cached kernel on its own file's timestamp only, so a kernel compiled against a
callee in another file keeps running the old callee after that file changes (see
``fractals.numba_cache``). Commands call :func:`refresh` before any kernel runs; importing a
package never touches the disk. Tests call it once per session.
"""

from __future__ import annotations

import functools
from pathlib import Path

import fractals
from fractals.numba_cache import drop_stale_caches


@functools.lru_cache(maxsize=1)
def refresh() -> bool:
    """Drop the caches of ``fractals`` and ``ipmix_cli.augment`` whose sources changed since
    they were stamped; return whether anything was dropped. Once per process."""
    fractals_dir = Path(fractals.__file__).resolve().parent
    augment_dir = Path(__file__).resolve().parent / "augment"
    dropped = drop_stale_caches(fractals_dir)
    # the recipe inlines fractals' random streams and deterministic maths: their sources are
    # part of its key
    dropped |= drop_stale_caches(
        augment_dir, [fractals_dir / "rng.py", *sorted((fractals_dir / "detmath").glob("*.py"))]
    )
    return dropped
