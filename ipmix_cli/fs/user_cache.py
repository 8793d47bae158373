"""Where ipmix keeps what it can remake: ``$XDG_CACHE_HOME/ipmix``, else ``~/.cache/ipmix``,
and what its caches share.

One root for the bucket reader's shard cache, the staging folder of bucket jobs and the digest,
scan and mixing caches, so a user who moves or clears "the ipmix cache" finds all of it in one
place. The caches that remember something about an input file key it by :func:`file_status`,
record it only once :func:`settled`, turn off the same way (:func:`cache_off`) and write their
entries through :func:`write_cache_entry`, whose failures only lose the saving.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ipmix_cli.fs.atomic import temporary_sibling, write_new_file

FileStatus = tuple[int, int, int, int, int]


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/ipmix``, else ``~/.cache/ipmix`` (not created here)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ipmix"


def cache_off(variable: str) -> bool:
    """Whether the cache switch ``variable`` (``IPMIX_DIGEST_CACHE``...) says off."""
    return os.environ.get(variable, "").lower() in ("off", "0", "no")


def file_status(st: os.stat_result) -> FileStatus:
    """What identifies one version of a file, the way git's index trusts one: device, inode,
    size, modification and status-change times in nanoseconds. The status-change time moves on
    any write, rename or ``touch`` and cannot be set back by a user."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def settled(status: FileStatus, now_ns: int, seconds: float) -> bool:
    """Whether a file of ``status`` last changed over ``seconds`` before ``now_ns``, so that a
    write within the file system's timestamp granularity cannot have gone unseen."""
    return now_ns - max(status[3], status[4]) > seconds * 1e9


def write_cache_entry(entry: Path, data: bytes) -> None:
    """Put ``data`` at ``entry`` under a temporary name first, replacing what was there;
    any ``OSError`` (a full disk, a read-only home) is ignored: a cache only saves time."""
    with contextlib.suppress(OSError):
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_sibling(entry)
        try:
            write_new_file(tmp, data)
            os.replace(tmp, entry)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
