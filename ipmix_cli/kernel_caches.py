"""Keep numba's on-disk kernel caches honest, checked once when a command starts.

numba keys a cached kernel on its own file's timestamp only, so a kernel compiled against a
callee in another file keeps running the old callee after that file changes (see
``fractals.numba_cache``). Commands call :func:`refresh` before any kernel runs; importing a
package never touches the disk. Tests call it once per session.

:func:`skip_blas_probe` spares a command numba's import of scipy.linalg at the first kernel load.
"""

from __future__ import annotations

import functools
import sys
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


_BLAS_PROBE = "scipy.linalg.cython_blas"


@functools.lru_cache(maxsize=1)
def skip_blas_probe() -> bool:
    """Load numba's array-maths lowering (``numba.np.arraymath``) without its BLAS probe; return
    whether the probe was skipped. Once per process, before the first kernel loads.

    numba's first cache load imports that module, which imports scipy.linalg (0.15-0.3 s of
    start-up, numpy.f2py and scipy's array-API layer with it) only to learn whether a jitted
    ``np.correlate`` / ``np.convolve`` may call BLAS. No kernel here calls BLAS and scipy is not a
    dependency, so the probe is made to fail (those two functions, if something else compiles
    them in this process, use numba's plain loop); anything else (``np.dot`` and
    ``np.linalg`` in nopython code) still imports scipy when compiled. Nothing changes when
    scipy.linalg or numba's module is already loaded.
    """
    if "numba.np.arraymath" in sys.modules or "scipy.linalg" in sys.modules:
        return False
    if _BLAS_PROBE in sys.modules:  # pragma: no cover - something odd already put it there
        return False
    sys.modules[_BLAS_PROBE] = None  # type: ignore[assignment]  # import fails: ImportError
    try:
        import numba.np.arraymath  # noqa: F401
    finally:
        if sys.modules.get(_BLAS_PROBE, 0) is None:
            del sys.modules[_BLAS_PROBE]
    return True
