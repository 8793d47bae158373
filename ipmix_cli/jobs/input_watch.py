"""Whether the input files stayed the same while a job read them.

Workers read the input while the job runs, some of it an hour after the start. A file
rewritten in place meanwhile (``np.savez`` over the same ``.npz``: the job's memory map then
shows the new bytes) or a picture of a folder replaced gave shards of which some rows came
from the old data and some from the new, and an entry that passed ``verify``. The file status
(device, inode, size, modification and change times: :func:`~ipmix_cli.fs.user_cache.file_status`)
of every input file is taken before the first task and compared before the entry is written;
a change leaves the output unfinished, with one line naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ipmix_cli.errors import AugmentError
from ipmix_cli.fs.user_cache import FileStatus, file_status
from ipmix_cli.sources.detect import HDF5_SUFFIXES


def watched_files(source: Any) -> list[Path]:
    """The local files ``source`` reads pixels from: a folder's pictures, an array file (and
    an ipmix output's shards), CIFAR's batch files. Empty for a source in a bucket."""
    root = getattr(source, "path", None)
    if not isinstance(root, Path):
        return []
    relpaths = getattr(source, "relpaths", None)
    if relpaths is not None:
        return [root / name for name in relpaths]
    files = getattr(source, "_files", None)
    files = list(files() if callable(files) else files or [])
    for path in list(files):
        shards = Path(path).with_suffix(".shards")
        if Path(path).suffix.lower() in HDF5_SUFFIXES and shards.is_dir():
            files.extend(sorted(shards.glob("*.h5")))
    return [Path(f) for f in files]


def _status(path: Path) -> FileStatus | None:
    try:
        return file_status(os.stat(path))
    except OSError:
        return None


class InputWatch:
    """The status of every input file at one moment, to compare with a later one."""

    def __init__(self, source: Any) -> None:
        self.files = watched_files(source)
        self.before = [_status(path) for path in self.files]

    def check(self) -> None:
        """Raise :class:`AugmentError` naming the first input file that changed since."""
        for path, before in zip(self.files, self.before, strict=True):
            now = _status(path)
            if now != before:
                what = "was removed" if now is None else "changed"
                raise AugmentError(
                    path,
                    f"{what} while the job read it, so some rows may hold its old pixels and "
                    "some its new; the output is left unfinished: rerun with --overwrite once "
                    "the input stays as it is",
                )
