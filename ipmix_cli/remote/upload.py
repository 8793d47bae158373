"""Shards going up: a finished shard file becomes one object carrying its own record.

A shard is written and checksummed locally under a temporary name (as for a local output),
then uploaded whole under its final key; the local file goes once the object is up. The object
carries its :class:`~ipmix_cli.shards.ShardInfo` as user metadata (``ipmix-shard``), so a
resume can tell from one HEAD per shard, without downloading anything, whether an object is a
complete shard of this job, and ``ipmix verify --quick`` can compare it with the entry.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ipmix_cli.fs.atomic import StagedFile
from ipmix_cli.fs.user_cache import cache_root
from ipmix_cli.remote.store import ObjectStore
from ipmix_cli.remote.url import ObjectURL
from ipmix_cli.shards.shard_info import ShardInfo


def stage_root() -> Path:
    """Where jobs writing to buckets stage their shards on this machine (``IPMIX_STAGE_DIR``,
    default ``~/.cache/ipmix/upload``): only the shards in flight are ever there."""
    given = os.environ.get("IPMIX_STAGE_DIR")
    if given:
        return Path(given)
    return cache_root() / "upload"


SHARD_METADATA = "ipmix-shard"
"""The user-metadata key of a shard object: its ShardInfo as compact JSON."""


def shard_metadata(info: ShardInfo, size: int) -> dict[str, str]:
    """The metadata an uploaded shard carries (S3 allows 2 KB of it; a record is ~300 bytes)."""
    record = {**info.to_dict(), "bytes": int(size)}
    return {SHARD_METADATA: json.dumps(record, sort_keys=True, separators=(",", ":"))}


def info_from_metadata(metadata: Mapping[str, str]) -> tuple[ShardInfo, int] | None:
    """The ShardInfo and size an object's metadata records; ``None`` for an object that is
    not an ipmix shard (or whose record does not parse): it is then recomputed, never trusted."""
    text = metadata.get(SHARD_METADATA)
    if text is None:
        return None
    try:
        record = json.loads(text)
        return ShardInfo.from_dict(record), int(record["bytes"])
    except (ValueError, KeyError, TypeError, IndexError):
        return None


@dataclass(frozen=True)
class PendingUpload:
    """A complete shard under its local temporary name, to be uploaded to ``url`` by the
    worker that wrote it (:meth:`upload`): a worker that waits for its upload before making
    the next shard keeps at most one shard on the local disk, however slow the link."""

    staged: StagedFile
    info: ShardInfo
    url: ObjectURL

    def upload(self) -> UploadedShard:
        """Upload the file as one object (S3 shows it only once complete), then drop the
        local copy; on any failure the local file goes and nothing is left under the key."""
        try:
            size = self.staged.tmp.stat().st_size
            ObjectStore(self.url.bucket).put_file(
                self.staged.tmp, self.url.key, shard_metadata(self.info, size)
            )
        finally:
            self.staged.discard()
        return UploadedShard(self.info)


@dataclass(frozen=True)
class UploadedShard:
    """A shard already up (uploaded by the worker that made it): to the job's commit loop,
    which commits local shards, committing it is a no-op."""

    info: ShardInfo

    def commit(self) -> ShardInfo:
        return self.info

    def discard(self) -> None:
        """Nothing to drop: the object is a complete shard, which a resume reuses."""
