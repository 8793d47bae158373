"""Removing what a job made, and only that, even while a dying worker still writes into it."""

from __future__ import annotations

import errno
import shutil
import time
from collections.abc import Collection
from pathlib import Path

from ipmix_cli.errors import OutputError

_ATTEMPTS = 10
_PAUSE_S = 0.1


def nearest_existing(path: Path) -> Path:
    """``path`` itself, or its nearest parent that exists: where a file not yet written will
    land (for permission and free-space checks)."""
    place = Path(path).absolute()
    while not place.exists():
        place = place.parent
    return place


def remove_tree(folder: Path, keep: Collection[str] = ()) -> None:
    """Remove ``folder``'s contents except the top-level names in ``keep`` (and ``folder``
    itself when nothing is kept).

    A worker process of a killed run can still be creating a temporary file in there for a
    moment (it notices its parent is gone and exits): ``rmtree`` then fails with "directory not
    empty", so removal is retried briefly. Any other failure is one line naming the path.
    """
    for attempt in range(_ATTEMPTS):
        try:
            if folder.is_dir() and not folder.is_symlink():
                for child in sorted(folder.iterdir()):
                    if child.name in keep:
                        continue
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink(missing_ok=True)
                if not keep:
                    folder.rmdir()
            elif folder.exists() or folder.is_symlink():
                folder.unlink()
            return
        except FileNotFoundError:
            continue  # something vanished under us: look again
        except OSError as error:
            if error.errno in (errno.ENOTEMPTY, errno.EEXIST) and attempt < _ATTEMPTS - 1:
                time.sleep(_PAUSE_S)
                continue
            raise OutputError(folder, f"cannot remove ({error.strerror or error})") from None
