"""``s3://bucket/key`` names: parsed once, kept apart from local paths.

``pathlib.Path("s3://b/k")`` collapses the double slash into ``s3:/b/k``, so a URL must never
pass through ``Path``: the CLI turns an ``s3://`` option into an :class:`ObjectURL` and every
layer asks :func:`is_remote` before treating a location as a file.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

from ipmix_cli.errors import OutputError

SCHEME = "s3://"
_OTHER_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_remote(location: object) -> bool:
    """Whether ``location`` names an object in a bucket (an :class:`ObjectURL` or a string
    starting with ``s3://``) rather than a local path."""
    return isinstance(location, ObjectURL) or (
        isinstance(location, str) and location.startswith(SCHEME)
    )


@dataclass(frozen=True)
class ObjectURL:
    """One object (or key prefix) in a bucket. ``str()`` gives the ``s3://`` form back."""

    bucket: str
    key: str

    @classmethod
    def parse(cls, text: str | ObjectURL) -> ObjectURL:
        """``s3://bucket/key``; a bucket with no key, an empty part or a ``..`` is refused in
        one line (an object key with ``//`` or ``..`` is legal in S3 but cannot be mirrored
        to a local cache)."""
        if isinstance(text, ObjectURL):
            return text
        if not text.startswith(SCHEME):
            raise OutputError(text, "not an s3:// URL")
        bucket, _, key = text[len(SCHEME) :].partition("/")
        parts = key.split("/")
        if not bucket or not key or any(p in ("", ".", "..") for p in parts):
            raise OutputError(
                text, "an s3:// location is s3://BUCKET/KEY, e.g. s3://data/run/out.h5"
            )
        return cls(bucket, key)

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"

    def __fspath__(self) -> str:  # pragma: no cover - a guard, not an interface
        raise TypeError(f"{self} is an object URL, not a local path")

    @property
    def name(self) -> str:
        return posixpath.basename(self.key)

    @property
    def stem(self) -> str:
        return posixpath.splitext(self.name)[0]

    @property
    def path(self) -> str:
        """``bucket/key``, the form s3fs takes."""
        return f"{self.bucket}/{self.key}"

    def sibling(self, name: str) -> ObjectURL:
        """The object ``name`` (a relative key, ``/`` allowed) beside this one."""
        return ObjectURL(self.bucket, posixpath.join(posixpath.dirname(self.key), name))

    def child(self, name: str) -> ObjectURL:
        """The object ``name`` under this key taken as a folder."""
        return ObjectURL(self.bucket, f"{self.key.rstrip('/')}/{name}")


def stays_inside(relative: str) -> bool:
    """Whether a name an entry records relative to its folder stays inside it (no ``..``,
    no absolute or empty part): only such names can be mirrored into a local folder."""
    parts = relative.split("/")
    return (
        bool(relative)
        and not relative.startswith("/")
        and "\\" not in relative
        and all(p not in ("", ".", "..") for p in parts)
    )


def shards_prefix(entry: ObjectURL) -> ObjectURL:
    """Where an entry object's shards live: ``run/out.h5`` -> ``run/out.shards`` (the local
    layout's ``OUT.shards`` folder, so the entry's relative shard names hold in both)."""
    return entry.sibling(entry.stem + ".shards")


def parse_location(text: str | os.PathLike[str]) -> Path | ObjectURL:
    """A command-line location: an :class:`ObjectURL` for ``s3://...``, else a ``Path``."""
    if isinstance(text, str) and text.startswith(SCHEME):
        return ObjectURL.parse(text)
    if isinstance(text, str) and _OTHER_SCHEME.match(text):
        raise OutputError(text, "only s3:// URLs are supported (or a local path)")
    return Path(text)


def location_text(location: str | os.PathLike[str] | ObjectURL) -> str:
    """A location as a user wrote it: ``s3://`` URLs unchanged, paths as ``str``."""
    return str(location) if is_remote(location) else os.fspath(location)
