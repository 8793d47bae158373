"""Keep numba's on-disk caches honest across edits of the kernels' source files.

numba keys a cached function on its own file's timestamp only. A kernel compiled against a
callee in another file (the recipe inlines the image ops, the renderer inlines the RNG) keeps
running the old callee after that file changes. :func:`drop_stale_caches` hashes every source a
package's kernels are built from and, when the hash moves, deletes the package's ``.nbi``/
``.nbc`` files so they are rebuilt on first use.

It deletes files, so it is not run at import (importing a library must not touch the disk):
the program's entry point calls it at command start, in the parent process, before any kernel
is loaded. Workers start after that and find the stamp current, so they never race on deletion.
An installed package never changes, so after the first run this is one hash and a compare. A
``NUMBA_CACHE_DIR`` elsewhere or a read-only install is left alone.
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
    changed since the caches were stamped; return whether anything was dropped.

    The sources are every ``*.py`` under ``package_dir``, subfolders included (hashed in sorted
    order of their paths relative to it, so a file moved between subfolders counts as a
    change), and the caches are those in every ``__pycache__`` below it: a kernel in a
    subpackage inlines its callees as much as one at the top does.
    """
    if os.environ.get("NUMBA_CACHE_DIR") or os.environ.get("NUMBA_DISABLE_JIT"):
        return False
    try:
        package_dir = Path(package_dir)
        own = sorted((p.relative_to(package_dir).as_posix(), p) for p in package_dir.rglob("*.py"))
        extra = [(p.name, p) for p in sorted(Path(p) for p in extra_sources)]
        digest = hashlib.sha256()
        for name, path in [*own, *extra]:
            digest.update(name.encode())
            digest.update(path.read_bytes())
        cache_dir = package_dir / "__pycache__"
        tag = f"{sys.implementation.cache_tag}-numba{nb.__version__}"
        stamp = cache_dir / f"kernel-sources.{tag}.sha256"
        if stamp.exists() and stamp.read_text() == digest.hexdigest():
            return False
        for pycache in package_dir.rglob("__pycache__"):
            if pycache.is_dir():
                for cached in [*pycache.glob("*.nbi"), *pycache.glob("*.nbc")]:
                    cached.unlink(missing_ok=True)
        cache_dir.mkdir(exist_ok=True)
        tmp = stamp.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(digest.hexdigest())
        tmp.replace(stamp)
        return True
    except OSError:
        return False
