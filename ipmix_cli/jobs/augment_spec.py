"""What ``ipmix augment`` is asked to do (:class:`AugmentSpec`) and what it reports back."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ipmix_cli.augment.config import IPMixConfig
from ipmix_cli.errors import AugmentError

SHARD_TARGET_BYTES = 16 * 1024 * 1024
# Sane bounds, checked before anything is allocated or written: one bad value (a typo in
# --copies, a label of 2**40) must be a one-line error, not a MemoryError after an hour.
MAX_COPIES = 100_000
MAX_SIDE = 4096  # px; a 4096 px JSD row is 150 MB
MAX_SHARD_BYTES = 4 << 30  # what one worker holds in memory for a shard
MAX_ROWS = 1 << 40
MAX_SHARDS = 1_000_000
SEEDS = (0, 1 << 64)
COMPRESSIONS = ("none", "lzf", "gzip")
ON_ERROR = ("fail", "skip")


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


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
        return int(max(64, min(16384, SHARD_TARGET_BYTES // self.row_bytes())))

    def row_bytes(self) -> int:
        """Bytes of one output row's images (all views)."""
        h, w = self.config.size
        return h * w * 3 * self.config.n_views

    def validate(self) -> None:
        """Refuse, in one line, values no real job has: before any input is read."""
        out = self.out
        if isinstance(self.copies, bool) or not 1 <= int(self.copies) <= MAX_COPIES:
            raise AugmentError(out, f"--copies must be in 1..{MAX_COPIES}, got {self.copies}")
        if isinstance(self.seed, bool) or not SEEDS[0] <= int(self.seed) < SEEDS[1]:
            raise AugmentError(out, f"--seed must be in 0..2**64-1, got {self.seed}")
        h, w = self.config.size
        if max(h, w) > MAX_SIDE or min(h, w) < 8:
            raise AugmentError(out, f"--size {h}x{w}: each side must be 8..{MAX_SIDE} px")
        if self.compression not in COMPRESSIONS:
            raise AugmentError(
                out, f"unknown compression {self.compression!r} ({', '.join(COMPRESSIONS)})"
            )
        if self.on_error not in ON_ERROR:
            raise AugmentError(out, f"--on-error must be fail or skip, got {self.on_error!r}")
        if self.shard_size is not None and int(self.shard_size) < 1:
            raise AugmentError(out, f"--shard-size must be at least 1 row, got {self.shard_size}")
        shard_bytes = self.rows_per_shard() * self.row_bytes()
        if shard_bytes > MAX_SHARD_BYTES:
            raise AugmentError(
                out,
                f"--shard-size {self.rows_per_shard()} rows of {h}x{w} would hold "
                f"{_human_bytes(shard_bytes)} per shard, more than a worker may hold in memory "
                f"({_human_bytes(MAX_SHARD_BYTES)}); use fewer rows per shard",
            )

    def validate_size(self, n_sources: int) -> None:
        """Refuse a job too large to plan (checked once the input's size is known)."""
        rows = n_sources * int(self.copies)
        shards = math.ceil(rows / self.rows_per_shard())
        if rows > MAX_ROWS or shards > MAX_SHARDS:
            raise AugmentError(
                self.out,
                f"{n_sources} images x {self.copies} copies = {rows} rows in {shards} shards is "
                f"more than ipmix plans ({MAX_ROWS} rows, {MAX_SHARDS} shards); use fewer "
                "copies or larger shards",
            )


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
