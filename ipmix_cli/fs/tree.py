"""Removing what a job made, and only that, even while a dying worker still writes into it."""

from __future__ import annotations

import errno
import os
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


def make_folders(folder: Path) -> Path | None:
    """Create ``folder`` and any missing parents; return the topmost folder this call created
    (``None`` when ``folder`` was there already), so that a command that fails can remove what
    it made, and only that (:func:`remove_empty_folders`). ``OSError`` as ``mkdir`` raises it."""
    folder = Path(folder).absolute()
    topmost = None
    place = folder
    while not os.path.lexists(place):
        topmost = place
        place = place.parent
    folder.mkdir(parents=True, exist_ok=True)
    return topmost


def remove_empty_folders(folder: Path, topmost: Path | None) -> None:
    """Remove ``folder`` and its parents up to ``topmost`` (what :func:`make_folders` returned),
    each only while it is empty: a failed command leaves no empty folder it made behind, and
    never removes a file or a folder someone else put there."""
    if topmost is None:
        return
    place = Path(folder).absolute()
    while True:
        try:
            place.rmdir()
        except OSError:  # not empty, or gone: leave it and everything above
            return
        if place == topmost or place == place.parent:
            return
        place = place.parent
