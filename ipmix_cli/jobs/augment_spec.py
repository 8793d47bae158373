"""What ``ipmix augment`` is asked to do (:class:`AugmentSpec`) and what it reports back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ipmix_cli.augment.config import IPMixConfig

SHARD_TARGET_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class AugmentSpec:
    """Everything that determines the output bytes (worker count deliberately excluded)."""

    input: Path
    mixing_set: Path
    out: Path
    config: IPMixConfig
    copies: int = 1
    seed: int = 0
    shard_size: int | None = None
    compression: str = "none"
    input_format: str | None = None
    on_error: str = "fail"
    split: str = "train"
    labels_path: Path | None = None

    def rows_per_shard(self) -> int:
        """Explicit ``shard_size``, else about 16 MiB of images per shard (64 to 16384 rows):
        small enough that a CIFAR-sized job splits into many shards for load balance and cheap
        resume, large enough that per-shard overhead (open, checksum, fsync) stays negligible."""
        if self.shard_size is not None:
            return self.shard_size
        h, w = self.config.size
        per_row = h * w * 3 * self.config.n_views
        return int(max(64, min(16384, SHARD_TARGET_BYTES // per_row)))


@dataclass
class AugmentSummary:
    out: Path
    images: int
    shards: int
    computed_shards: int
    reused_shards: int
    bytes: int
    seconds: float
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Images computed per second in this run (reused shards excluded)."""
        computed = self.images * self.computed_shards / max(self.shards, 1)
        return computed / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        skipped = f", {len(self.skipped)} unreadable files skipped" if self.skipped else ""
        reused = f", {self.reused_shards} reused" if self.reused_shards else ""
        return (
            f"{self.images} images in {self.shards} shards ({self.bytes / 1e6:.1f} MB){reused}"
            f" in {self.seconds:.1f} s, {self.rate:.0f} images/s{skipped} -> {self.out}"
        )
