"""Keep numba's on-disk caches honest across edits of the kernels' source files.

numba keys a cached function on its own file's timestamp only. A kernel compiled against a
callee in another file (the recipe inlines the image ops, the renderer inlines the RNG) keeps
running the old callee after that file changes. Each package calls :func:`drop_stale_caches` at
import: it hashes every source its kernels are built from and, when the hash moves, deletes the
package's ``.nbi``/``.nbc`` files so they are rebuilt on first use.

An installed package never changes, so after the first import this is one hash and a compare.
The parent process imports before any worker starts, so workers find the stamp current and
never race on deletion. A ``NUMBA_CACHE_DIR`` elsewhere or a read-only install is left alone.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterable
from pathlib import Path

import numba as nb


def drop_stale_caches(package_dir: Path, extra_sources: Iterable[Path] = ()) -> bool:
    """Delete ``package_dir``'s numba caches if any of its sources (or ``extra_sources``)
    changed since the caches were stamped; return whether anything was dropped."""
    if os.environ.get("NUMBA_CACHE_DIR") or os.environ.get("NUMBA_DISABLE_JIT"):
        return False
    try:
        sources = sorted(package_dir.glob("*.py")) + sorted(Path(p) for p in extra_sources)
        digest = hashlib.sha256()
        for path in sources:
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
        cache_dir = package_dir / "__pycache__"
        tag = f"{sys.implementation.cache_tag}-numba{nb.__version__}"
        stamp = cache_dir / f"kernel-sources.{tag}.sha256"
        if stamp.exists() and stamp.read_text() == digest.hexdigest():
            return False
        if cache_dir.is_dir():
            for cached in [*cache_dir.glob("*.nbi"), *cache_dir.glob("*.nbc")]:
                cached.unlink(missing_ok=True)
        cache_dir.mkdir(exist_ok=True)
        tmp = stamp.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(digest.hexdigest())
        tmp.replace(stamp)
        return True
    except OSError:
        return False
