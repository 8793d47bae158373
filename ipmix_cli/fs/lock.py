"""One job per output: an exclusive lock held for the whole job, refused at once when taken.

Two runs on the same output (two ``--resume`` started together, a run and an ``--overwrite``)
would otherwise both write, both commit shards and both report success over each other's files.
The lock is ``flock`` on a small file inside the output's own folder: the kernel releases it
when the process ends however it ends (``SIGKILL`` included), so a killed run never leaves a
stale lock, and the file itself stays (removing a lock file is what makes lock files racy). It
holds the owner's pid, for the message. Worker processes never inherit it (the descriptor is
not inheritable), so orphaned workers cannot keep an output locked.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from ipmix_cli.errors import OutputError

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX: no locking, as before
    fcntl = None  # type: ignore[assignment]


@contextlib.contextmanager
def exclusive_lock(lock_file: Path, output: Path) -> Iterator[None]:
    """Hold the lock on ``output`` (through ``lock_file``) for the ``with`` block, or raise an
    :class:`OutputError` naming ``output`` and the pid of the run that holds it."""
    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise OutputError(output, f"cannot write here ({error.strerror or error})") from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
                raise OutputError(
                    output,
                    f"another ipmix run (pid {owner}) is writing this output; wait for it to "
                    "finish or stop it",
                ) from None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # no pid left behind: an output's files are its bytes
    finally:
        os.close(fd)  # releases the lock
