"""One shard's own record: :class:`ShardInfo`, read from its attributes, and the resume check."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h5py

from ipmix_cli.errors import ShardError, one_line
from ipmix_cli.shards.attrs import attr_value, decode_attr
from ipmix_cli.shards.checksum import shard_checksum
from ipmix_cli.shards.codec import dataset_codec, dataset_image_shape, dataset_quality
from ipmix_cli.shards.layout import (
    RESERVED_ATTRS,
    SHARD_FORMAT_VERSION,
    SHARD_KIND,
    shard_relpath,
)


@dataclass(frozen=True)
class ShardInfo:
    """What the entry file needs to know about one written shard.

    ``file`` is the shard's file name (inside the entry's ``.shards`` folder); ``image_shape``
    is (H, W); ``mode`` is ``"standard"`` or ``"jsd"``; ``codec`` is how its image datasets
    store images (``"raw"``, ``"jpeg"``, ``"png"``) and ``quality`` the JPEG quality (else
    ``None``). The dict form leaves codec and quality out for raw shards, so records of raw
    shards read and compare as they did before codecs existed.
    """

    index: int
    file: str
    count: int
    checksum: str
    image_shape: tuple[int, int]
    mode: str = "standard"
    attrs: dict[str, Any] = field(default_factory=dict, compare=False)
    codec: str = "raw"
    quality: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (used in manifests and resume records)."""
        d = asdict(self)
        d["image_shape"] = list(self.image_shape)
        if self.codec == "raw":
            del d["codec"]
        if self.quality is None:
            del d["quality"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ShardInfo:
        """Inverse of :meth:`to_dict`."""
        return cls(
            index=int(d["index"]),
            file=str(d["file"]),
            count=int(d["count"]),
            checksum=str(d["checksum"]),
            image_shape=(int(d["image_shape"][0]), int(d["image_shape"][1])),
            mode=str(d.get("mode", "standard")),
            attrs=dict(d.get("attrs", {})),
            codec=str(d.get("codec", "raw")),
            quality=None if d.get("quality") is None else int(d["quality"]),
        )


def read_shard_info(path: str | os.PathLike[str]) -> ShardInfo:
    """Read a shard's :class:`ShardInfo` from its attributes (cheap: no data read or hashed)."""
    p = Path(path)
    if not p.is_file():
        raise ShardError(p, "shard is missing")
    try:
        with h5py.File(p, "r") as f:
            a = {k: decode_attr(v) for k, v in f.attrs.items()}
            shape = codec = quality = None
            if "images" in f:
                images = f["images"]
                codec, quality = dataset_codec(images), dataset_quality(images)
                shape = (images.shape[0], *dataset_image_shape(images))
    except (OSError, KeyError, ValueError) as error:
        raise ShardError(p, f"unreadable (truncated or corrupt): {one_line(error, 160)}") from None
    if a.get("kind") != SHARD_KIND:
        raise ShardError(p, "not an ipmix shard (no kind='ipmix-shard' attribute)")
    if int(a.get("format_version", 0)) > SHARD_FORMAT_VERSION:
        raise ShardError(
            p,
            f"shard format {a.get('format_version')} is newer than this ipmix reads "
            f"({SHARD_FORMAT_VERSION})",
        )
    if shape is None or len(shape) != 4:
        raise ShardError(p, "shard has no (n, H, W, 3) 'images' dataset")
    extra = {k: v for k, v in a.items() if k not in RESERVED_ATTRS}
    return ShardInfo(
        index=int(a["shard_index"]),
        file=shard_relpath(p),
        count=int(a["count"]),
        checksum=str(a["checksum"]),
        image_shape=(int(shape[1]), int(shape[2])),
        mode=str(a.get("mode", "standard")),
        attrs=extra,
        codec=str(codec),
        quality=quality,
    )


def shard_is_valid(
    path: str | os.PathLike[str],
    expected: ShardInfo | Mapping[str, Any] | int,
    *,
    deep: bool = True,
) -> bool:
    """Resume check: may the shard at ``path`` be kept instead of being recomputed?

    ``expected`` is the planned count (an int), or a :class:`ShardInfo` / mapping with ``count``
    and optionally ``index``, ``checksum``, ``image_shape``, ``mode``, ``codec``, ``quality`` and
    ``attrs`` (every listed attribute must match, e.g. a config hash; a :class:`ShardInfo`
    always lists its codec). With ``deep`` the data are re-hashed and must match
    the shard's stored checksum, which catches truncation and bit flips. Never raises for a bad
    shard: anything missing, unreadable or different is simply ``False``.
    """
    if isinstance(expected, ShardInfo):
        want: dict[str, Any] = expected.to_dict()
    elif isinstance(expected, Mapping):
        want = dict(expected)
    else:
        want = {"count": int(expected)}
    try:
        info = read_shard_info(path)
    except ShardError:
        return False
    if info.count != int(want["count"]):
        return False
    if "index" in want and info.index != int(want["index"]):
        return False
    if want.get("checksum") and info.checksum != want["checksum"]:
        return False
    if want.get("image_shape") and tuple(info.image_shape) != tuple(want["image_shape"]):
        return False
    if want.get("mode") and info.mode != want["mode"]:
        return False
    want_codec = expected.codec if isinstance(expected, ShardInfo) else want.get("codec")
    if want_codec and info.codec != want_codec:
        return False
    if want.get("quality") is not None and info.quality != int(want["quality"]):
        return False
    for key, value in dict(want.get("attrs") or {}).items():
        if info.attrs.get(key) != decode_attr(attr_value(value)):
            return False
    if deep:
        try:
            return shard_checksum(path) == info.checksum
        except ShardError:
            return False
    return True
