"""What ``ipmix augment`` is asked to do (:class:`AugmentSpec`) and what it reports back."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ipmix_cli.augment.config import IPMixConfig
from ipmix_cli.errors import AugmentError
from ipmix_cli.remote.url import ObjectURL
from ipmix_cli.ui.words import count, human_bytes, plural

__all__ = ["AugmentSpec", "AugmentSummary", "human_bytes", "plural"]

SHARD_MIN_BYTES = 16 << 20  # the default shard target: at least this ...
SHARD_MAX_BYTES = 256 << 20  # ... at most this, ...
SHARD_TARGET_COUNT = 64  # ... and otherwise the job's raw bytes over this many shards
# Sane bounds, checked before anything is allocated or written: one bad value (a typo in
# --copies, a label of 2**40) must be a one-line error, not a MemoryError after an hour.
MAX_COPIES = 100_000
MAX_SIDE = 4096  # px; a 4096 px JSD row is 150 MB
MAX_SHARD_BYTES = 4 << 30  # what one worker holds in memory for a shard
MAX_ROWS = 1 << 40
MAX_SHARDS = 1_000_000
SEEDS = (0, 1 << 64)
COMPRESSIONS = ("none", "lzf", "gzip")
CODECS = ("raw", "jpeg", "png")
FINGERPRINTS = ("stat", "full")
ON_ERROR = ("fail", "skip")


@dataclass(frozen=True)
class AugmentSpec:
    """Everything that determines the output bytes (worker count deliberately excluded)."""

    input: Path
    mixing_set: Path | ObjectURL
    out: Path | ObjectURL
    """The entry file, or an ``s3://`` entry object (see :mod:`ipmix_cli.jobs.remote_output`)."""
    config: IPMixConfig
    copies: int = 1
    seed: int = 0
    shard_size: int | None = None
    """Rows per shard; ``None``: from ``shard_bytes``, else the default target."""
    compression: str = "none"
    input_format: str | None = None
    on_error: str = "fail"
    split: str = "train"
    labels_path: Path | None = None
    shard_bytes: int | None = None
    """Raw image bytes per shard (``--shard-size 256MiB``); rows are what is planned."""
    codec: str = "raw"
    quality: int = 90
    fingerprint: str = "stat"
    classes: Path | None = None
    """``--classes FILE``: the class folders of a folder input, in label order."""
    clean: bool = False
    """The clean export (``ipmix export``): resize and centre crop, no augmentation."""
    remote: ObjectURL | None = None
    """Set in the spec workers get for an ``s3://`` output: ``out`` is then the local staging
    entry and each shard, once written there, is uploaded under this entry object."""

    def rows_per_shard(self, n_sources: int) -> int:
        """Rows per shard: the explicit ``shard_size``, else ``shard_bytes`` of raw images,
        else a default of 16-256 MiB of raw images that splits the job into about 64 shards.
        A CIFAR-sized job then has enough shards for load balance and cheap resume, and
        ImageNet at 224 px a few thousand 256 MiB files rather than 46,000 of 16 MiB (per-shard
        overhead, open, checksum, fsync, stays negligible either way). Raw bytes, whatever the
        codec: the plan must not depend on how well the images compress."""
        if self.shard_size is not None:
            return int(self.shard_size)
        row = self.row_bytes()
        if self.shard_bytes is not None:
            return max(1, int(self.shard_bytes) // row)
        total = int(n_sources) * int(self.copies) * row
        target = min(SHARD_MAX_BYTES, max(SHARD_MIN_BYTES, total // SHARD_TARGET_COUNT))
        # A task holds one shard per copy in memory (it decodes each image once for all):
        # the target is for the task, so a shard is 1/copies of it, but still 16 MiB or more
        # while the task stays within 256 MiB: with --copies 4 a 224 px job of 4,000 images
        # made 260 shards of 9 MiB, and their ~2.5 ms each of HDF5 metadata, file creation
        # and fsync cost 5% of the run.
        copies = int(self.copies)
        floor = min(SHARD_MIN_BYTES // row, SHARD_MAX_BYTES // (row * copies))
        return int(max(8, min(1 << 20, max(target // (row * copies), floor))))

    def num_shards(self, n_sources: int) -> int:
        """Shards of the job: each copy's block of rows cut into the same source ranges."""
        return int(self.copies) * math.ceil(int(n_sources) / self.rows_per_shard(n_sources))

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
        if self.codec not in CODECS:
            raise AugmentError(out, f"unknown --codec {self.codec!r} ({', '.join(CODECS)})")
        if self.codec != "raw" and self.compression != "none":
            raise AugmentError(out, "--compression applies to --codec raw only")
        if isinstance(self.quality, bool) or not 1 <= int(self.quality) <= 100:
            raise AugmentError(out, f"--quality must be in 1..100, got {self.quality}")
        if self.fingerprint not in FINGERPRINTS:
            raise AugmentError(out, f"--fingerprint must be stat or full, got {self.fingerprint!r}")
        if self.shard_size is not None and int(self.shard_size) < 1:
            raise AugmentError(out, f"--shard-size must be at least 1 row, got {self.shard_size}")
        row = self.row_bytes()
        if self.shard_bytes is not None and int(self.shard_bytes) < row:
            raise AugmentError(
                out,
                f"--shard-size {human_bytes(self.shard_bytes)} is less than one row of {h}x{w} "
                f"({human_bytes(row)})",
            )
        if self.shard_size is not None or self.shard_bytes is not None:
            rows = self.rows_per_shard(0)
            held = rows * row * int(self.copies)  # a task makes one shard per copy
            if held > MAX_SHARD_BYTES:
                raise AugmentError(
                    out,
                    f"--shard-size {count(rows, 'row')} of {h}x{w} x "
                    f"{count(self.copies, 'copy')} would hold "
                    f"{human_bytes(held)} per task, more than a worker may hold in memory "
                    f"({human_bytes(MAX_SHARD_BYTES)}); use fewer rows per shard",
                )

    def validate_size(self, n_sources: int) -> None:
        """Refuse a job too large to plan (checked once the input's size is known)."""
        rows = n_sources * int(self.copies)
        shards = self.num_shards(n_sources) if n_sources else 0
        if rows > MAX_ROWS or shards > MAX_SHARDS:
            raise AugmentError(
                self.out,
                f"{count(n_sources, 'image')} x {count(self.copies, 'copy')} = "
                f"{count(rows, 'row')} in {count(shards, 'shard')} is more than ipmix plans "
                f"({MAX_ROWS} rows, {MAX_SHARDS} shards); use fewer copies or larger shards",
            )


@dataclass
class AugmentSummary:
    out: Path | ObjectURL
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
        """The one-line summary ``ipmix augment`` prints (worded in :mod:`ipmix_cli.ui.summaries`,
        with every other summary line)."""
        from ipmix_cli.ui.summaries import augment_line

        return augment_line(self)
