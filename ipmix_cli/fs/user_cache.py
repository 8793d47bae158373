"""Where ipmix keeps what it can remake: ``$XDG_CACHE_HOME/ipmix``, else ``~/.cache/ipmix``.

One root for the bucket reader's shard cache, the staging folder of bucket jobs and the digest
cache, so a user who moves or clears "the ipmix cache" finds all of it in one place.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/ipmix``, else ``~/.cache/ipmix`` (not created here)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ipmix"
