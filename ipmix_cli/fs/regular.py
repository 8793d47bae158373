"""Opening an input file only if it is a regular file.

Why: a data set folder can hold anything a directory listing shows, and opening a named pipe
(FIFO) for reading waits, without end, for a writer: one stray ``mkfifo x.jpg`` (or a
character device linked in by mistake) hung the scan, the mixing set's fingerprint or the
read-ahead thread with no message. The file is opened non-blocking (which changes nothing
for a regular file's reads) and its type checked on the open descriptor, so there is no
window between a check and the open.
"""

from __future__ import annotations

import errno
import os
import stat

_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_FLAGS |= getattr(os, "O_BINARY", 0)


class NotRegularFileError(OSError):
    """``path`` is a pipe, socket, device or folder, not a file one can read data from."""

    def __init__(self, path: str | os.PathLike[str], mode: int) -> None:
        self.kind = kind_of(mode)
        super().__init__(errno.EINVAL, f"{self.kind}, not a regular file", os.fspath(path))


def kind_of(mode: int) -> str:
    """What a file of ``st_mode`` is, as an error message names it ("a file" when regular)."""
    kinds = (
        (stat.S_ISREG, "a file"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((name for test, name in kinds if test(mode)), "a special file")


def path_kind(path: str | os.PathLike[str]) -> str:
    """What ``path`` is ("a folder", "a named pipe (FIFO)"...), for a message."""
    return kind_of(os.stat(path).st_mode)


def regular_or_absent(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` exists; :class:`NotRegularFileError` if it is there but is not a
    regular file. For readers such as HDF5's that open a path themselves: a ``stat`` (which
    never blocks) before they can wait on a pipe."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(mode):
        raise NotRegularFileError(path, mode)
    return True


def open_regular(path: str | os.PathLike[str]) -> int:
    """A read-only descriptor of ``path`` (the caller closes it); :class:`NotRegularFileError` if
    it is not a regular file, the open's own ``OSError`` if it cannot be opened."""
    fd = os.open(path, _FLAGS)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(path, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str | os.PathLike[str]) -> bytes:
    """The whole of regular file ``path`` (see :func:`open_regular`)."""
    with open(open_regular(path), "rb", buffering=0) as handle:
        return handle.readall()
