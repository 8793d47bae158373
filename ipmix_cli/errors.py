"""Every error type ipmix raises on purpose, in one place.

Every error the library raises on purpose is an :class:`IpmixError`. Its ``str()`` is a single
line of the form ``"<path>: <what is wrong>"`` so the CLI can print it as-is (no traceback) and a
user can tell at a glance which file to look at. Multi-line causes (for example an HDF5 error
stack) are collapsed onto that one line.

One class per layer that can fail, so a caller can tell where a problem lies without parsing
messages: the input (:class:`SourceError`, :class:`DecodeError`), the recipe
(:class:`ConfigError`), the output format (:class:`ShardError`), what a command would write
(:class:`OutputError`), the jobs (:class:`AugmentError`, :class:`BankError`) and the parallel
backends (:class:`BackendError`, :class:`DaskError`). The fractal library has its own
``fractals.FractalError``: it sits below ipmix_cli and cannot import it.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "AugmentError",
    "BackendError",
    "BankError",
    "ConfigError",
    "DaskError",
    "DecodeError",
    "DiskFullError",
    "RemoteError",
    "IpmixError",
    "OutputError",
    "ShardError",
    "SourceError",
    "one_line",
    "printable",
]


def one_line(text: object, limit: int = 300) -> str:
    """Collapse ``text`` to one line of at most ``limit`` characters.

    Library messages (Pillow, h5py, numpy) sometimes span several lines; ours must not, because
    the CLI prints one line per problem and tests match on it.
    """
    s = " ".join(str(text).split())
    if len(s) > limit:
        s = s[: limit - 3] + "..."
    return s


_CONTROL_ESCAPES = {
    code: (
        "\\n" if code == 10 else "\\r" if code == 13 else "\\t" if code == 9 else f"\\x{code:02x}"
    )
    for code in (*range(32), 127)
}


def printable(name: object) -> str:
    """``name`` with its control characters written as escapes (``\\n``, ``\\x1b``): a file
    may be called ``bad<newline>name.png``, and a message naming it must still be one line
    that shows which file it is (other characters, unicode included, are kept)."""
    return str(name).translate(_CONTROL_ESCAPES)


def _location(path: object) -> str | None:
    """A path as it is shown: an ``s3://`` URL must not go through ``Path``, which would
    collapse its double slash."""
    if path is None:
        return None
    text = str(path)
    return text if "://" in text else str(Path(text))


class IpmixError(Exception):
    """Base class: a problem the user can fix, usually with a named file or folder.

    Two call forms, both giving a one-line ``str()``:

    * ``IpmixError(path, problem)`` -> ``"<path>: <problem>"`` (preferred: ``path`` and
      ``problem`` stay available as attributes, e.g. for ``skipped`` lists);
    * ``IpmixError(message)`` -> ``message`` (already formatted by the caller, conventionally
      ``"<path>: <problem>"`` too).
    """

    def __init__(self, *args: object) -> None:
        if len(args) == 2:
            path, problem = args
            self.path: str | None = _location(path)
            self.problem = one_line(problem)
        elif len(args) == 1:
            self.path = None
            self.problem = one_line(args[0])
        else:
            raise TypeError("IpmixError(message) or IpmixError(path, problem)")
        super().__init__(*args)

    def __str__(self) -> str:
        if self.path is None:
            return self.problem
        return f"{printable(self.path)}: {self.problem}"


class SourceError(IpmixError):
    """An input data set (or mixing set) cannot be opened or read."""


class DecodeError(SourceError):
    """One image file cannot be decoded (not an image, truncated, empty, ...)."""


class ShardError(IpmixError):
    """An output shard or entry file is missing, corrupt or inconsistent."""


class ConfigError(IpmixError, ValueError):
    """An IPMix option is out of range or of the wrong type (a ``ValueError`` too, so plain
    Python callers can catch it without knowing ipmix's hierarchy)."""


class OutputError(IpmixError):
    """A file or folder a command would write cannot be written as asked: it exists and
    ``--overwrite`` was not given, it is not writable, or another run holds it."""


class DiskFullError(OutputError):
    """The file system ran out of space (or quota) while ipmix was writing. A job catches it
    and adds what is kept and how to continue."""


class RemoteError(OutputError):
    """An object in a bucket cannot be written or read: no credentials, the store cannot be
    reached (after bounded retries), a missing bucket or object, a denied request, or an object
    whose bytes are not what the entry file records. The path is the object's ``s3://`` URL."""


class AugmentError(IpmixError):
    """The augment job cannot run as asked."""


class BankError(IpmixError):
    """A fractal bank cannot be made or read as asked."""


class BackendError(IpmixError):
    """The parallel backend options do not fit together."""


class DaskError(BackendError):
    """The dask cluster cannot be used as asked."""
