"""Looking at a path before a command uses it, without the exceptions ``pathlib`` lets through.

``Path.exists()`` and ``Path.is_dir()`` raise on a name longer than the file system allows
(``ENAMETOOLONG``) and ``Path.resolve(strict=True)`` raises ``RuntimeError`` on symbolic links
that point at each other: a traceback where the user deserves one line naming the path. The
checks made before any work therefore ask here first, and then compare paths as the writes and
reads will reach them (symbolic links and ``..`` followed), so that a second spelling of a file
is recognised as the same file.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX: no locking, nothing to probe
    fcntl = None  # type: ignore[assignment]

NAME_TOO_LONG = "name too long (longer than the file system allows)"
SYMLINK_LOOP = "symlink loop (symbolic links that point at each other)"


_UNUSABLE = {errno.ENAMETOOLONG: NAME_TOO_LONG, errno.ELOOP: SYMLINK_LOOP}


def lookup_problem(error: OSError) -> str:
    """A failed look-up of a path, as one phrase: the two that make it unusable whatever is
    done with it (:func:`path_problem`) in these words wherever they are told, else the
    system's own."""
    return _UNUSABLE.get(error.errno or 0) or f"cannot look it up ({error.strerror or error})"


def path_problem(path: str | os.PathLike[str]) -> str | None:
    """What makes ``path`` unusable whatever is done with it: a name too long or a symbolic
    link loop on the way to it, as one phrase; ``None`` otherwise (a path that does not exist
    yet is fine: the operation that needs it says so)."""
    for look in (os.lstat, os.stat):  # lstat: a dangling link's own name can be too long
        try:
            look(path)
        except OSError as error:
            if error.errno in _UNUSABLE:
                return lookup_problem(error)
        except ValueError:  # an embedded NUL: no file system accepts it
            return "not a valid path (it holds a NUL character)"
    return NAME_TOO_LONG if _too_long_to_create(path) else None


def _too_long_to_create(path: str | os.PathLike[str]) -> bool:
    """Whether a name in ``path`` (or the whole) is past the limits of the file system it would
    be created on. A look-up under a folder that does not exist yet stops at that folder with
    "no such file", so a command would create the missing folders and only then meet the name
    too long, leaving them behind: the nearest existing folder's limits tell it beforehand."""
    absolute = os.path.abspath(path)
    place = absolute
    while not os.path.lexists(place) and os.path.dirname(place) != place:
        place = os.path.dirname(place)
    try:
        name_max = os.pathconf(place, "PC_NAME_MAX")
        path_max = os.pathconf(place, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096  # Linux's usual limits
    encoded = os.fsencode(absolute)
    return len(encoded) >= path_max or any(len(part) > name_max for part in encoded.split(b"/"))


def real_path(path: str | os.PathLike[str]) -> Path:
    """``path`` with every symbolic link and ``..`` followed, as far as it exists: the file a
    read reaches. Never raises (a loop is left as spelt; :func:`path_problem` reports it)."""
    return Path(os.path.realpath(os.path.abspath(path)))


def write_target(path: str | os.PathLike[str]) -> Path:
    """Where a write or removal of ``path`` lands: its folder followed as :func:`real_path`
    does, its own name kept, because an atomic rename (and an unlink) replaces a symbolic link
    itself, not what it points to."""
    absolute = Path(os.path.abspath(path))
    return real_path(absolute.parent) / absolute.name


def lies_within(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (both as :func:`real_path` or
    :func:`write_target` give them: compared as spelt)."""
    return path == folder or folder in path.parents


def lock_holder(lock_file: Path) -> str | None:
    """The pid recorded in ``lock_file`` when another process holds its ``flock`` (as
    :func:`ipmix_cli.fs.lock.exclusive_lock` takes it), else ``None``. Opens read-only and
    creates nothing, so a dry run can ask whether the real run would be refused. A process that
    holds the lock itself must not ask: its own lock counts as held."""
    if fcntl is None:
        return None
    try:
        fd = os.open(lock_file, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None  # absent (or unreadable): the real run's own open reports what is wrong
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        except OSError:
            return None
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
