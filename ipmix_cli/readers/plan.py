"""Epoch plans: which rows each rank reads in each epoch, in what order, cut into batches.

One :class:`EpochPlan` serves every adapter (numpy, PyTorch, tf.data, JAX, grain), so the
plan's options (``shuffle``, ``seed``, ``rank``, ``world_size``, ``even``, ``epoch_mode``) are
declared, validated and documented here only; the adapters take them as keywords and hand them
over with :meth:`EpochPlan.split_options`.

Why epochs pick copies: rows are copy-major (``ipmix_cli.shards.layout.row_of``), so N
pre-computed copies give N epochs of fresh augmentations when epoch ``e`` reads copy
``e % copies``. Shuffling is seeded by ``(seed, epoch)`` and the same on every rank, which then
takes its own contiguous block, so ranks are disjoint and together cover the epoch.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np

from ipmix_cli.shards.layout import row_of

__all__ = [
    "EpochMode",
    "EpochPlan",
    "Even",
    "batch_slices",
    "epoch_rows",
    "even_for",
    "start_batch_of",
]

EpochMode = Literal["copy", "all"]
Even = Literal["pad", "drop"] | None

_CACHED_EPOCHS = 4  # parallel readers (tf.data, grain threads) straddle at most two epochs


@dataclass(frozen=True)
class EpochPlan:
    """The rows ``rank`` reads in each epoch of an output of ``copies`` x ``num_sources`` rows.

    ``epoch_mode="copy"`` (default): epoch ``e`` reads copy ``e % copies`` of every source once,
    so each epoch sees a fresh augmentation of each image. ``"all"``: every epoch reads every
    row of every copy once.

    ``shuffle`` permutes with a generator seeded by ``(seed, epoch)``: the same order in every
    process and on every rank, different each epoch (also for epochs that reuse a copy). The
    plan is then cut into ``world_size`` contiguous blocks of sizes differing by at most one;
    ``rank`` gets its block. Distributed training usually needs equal lengths on every rank:
    ``even="pad"`` repeats the first rows to fill the last block (like ``DistributedSampler``),
    ``even="drop"`` drops up to ``world_size - 1`` rows.

    The rows of the last few epochs are cached (thread safe), so adapters that ask for one batch
    at a time do not recompute a permutation per batch. Picklable.
    """

    num_sources: int
    copies: int
    shuffle: bool = True
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    even: Even = None
    epoch_mode: EpochMode = "copy"

    def __post_init__(self) -> None:
        for name in ("num_sources", "copies", "rank", "world_size", "seed"):
            object.__setattr__(self, name, int(getattr(self, name)))
        object.__setattr__(self, "shuffle", bool(self.shuffle))
        if self.num_sources < 1 or self.copies < 1:
            raise ValueError(
                f"need num_sources >= 1 and copies >= 1, got {self.num_sources}, {self.copies}"
            )
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank {self.rank} of {self.world_size}"
            )
        if self.even not in (None, "pad", "drop"):
            raise ValueError(f"even must be None, 'pad' or 'drop', got {self.even!r}")
        if self.epoch_mode not in ("copy", "all"):
            raise ValueError(f"epoch_mode must be 'copy' or 'all', got {self.epoch_mode!r}")
        self.__setstate__({})

    # -- options -------------------------------------------------------------------------------
    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The keyword options of a plan (everything but the output's shape)."""
        return tuple(f.name for f in fields(cls) if f.name not in ("num_sources", "copies"))

    @classmethod
    def split_options(cls, options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(plan options, the rest)`` of an adapter's keyword arguments."""
        names = set(cls.option_names())
        plan = {k: v for k, v in options.items() if k in names}
        rest = {k: v for k, v in options.items() if k not in names}
        return plan, rest

    # -- rows ----------------------------------------------------------------------------------
    def rows(self, epoch: int) -> np.ndarray:
        """The output rows this rank reads in ``epoch``, in reading order (int64, read-only)."""
        epoch = int(epoch)
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        with self._lock:
            cached = self._cache.get(epoch)
            if cached is not None:
                self._cache.move_to_end(epoch)
                return cached
        rows = self._compute(epoch)
        rows.flags.writeable = False
        with self._lock:
            self._cache[epoch] = rows
            while len(self._cache) > _CACHED_EPOCHS:
                self._cache.popitem(last=False)
        return rows

    def rows_per_epoch(self) -> int:
        """How many rows this rank reads in every epoch (the same for every epoch)."""
        return len(self.rows(0))

    def batch_rows(self, epoch: int, batch_size: int, drop_last: bool = False) -> list[np.ndarray]:
        """The rows of each batch of ``epoch`` (last one short unless ``drop_last``)."""
        rows = self.rows(epoch)
        return [rows[part] for part in batch_slices(len(rows), batch_size, drop_last)]

    def _compute(self, epoch: int) -> np.ndarray:
        if self.epoch_mode == "copy":
            n, base = self.num_sources, row_of(epoch % self.copies, 0, self.num_sources)
        else:
            n, base = self.num_sources * self.copies, 0
        if self.shuffle:
            generator = np.random.default_rng([self.seed & 0xFFFFFFFFFFFFFFFF, epoch])
            rows = generator.permutation(n)
        else:
            rows = np.arange(n, dtype=np.int64)
        rows = rows.astype(np.int64, copy=False) + base
        if self.world_size == 1:
            return rows
        if self.even == "pad":
            rows = np.resize(rows, math.ceil(n / self.world_size) * self.world_size)  # cyclic
        elif self.even == "drop":
            rows = rows[: n - n % self.world_size]
        bounds = np.linspace(0, len(rows), self.world_size + 1).round().astype(np.int64)
        return rows[bounds[self.rank] : bounds[self.rank + 1]]

    # -- pickling: the cache and its lock stay in their process --------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            object.__setattr__(self, key, value)
        object.__setattr__(self, "_lock", threading.Lock())
        object.__setattr__(self, "_cache", OrderedDict())


def epoch_rows(num_sources: int, copies: int, epoch: int, **options: Any) -> np.ndarray:
    """The output rows that ``rank`` reads in ``epoch``, in reading order (int64); the
    ``options`` are those of :class:`EpochPlan`."""
    return EpochPlan(num_sources, copies, **options).rows(epoch).copy()


def even_for(even: Even | Literal["auto"], world_size: int, drop_last: bool) -> Even:
    """``even="auto"`` the way ``DistributedSampler`` behaves: with several ranks every rank gets
    the same number of rows (dropping the remainder with ``drop_last``, else padding)."""
    if even != "auto":
        return even
    return None if world_size == 1 else ("drop" if drop_last else "pad")


def batch_slices(n: int, batch_size: int, drop_last: bool = False) -> list[slice]:
    """Slices cutting ``n`` planned rows into batches of ``batch_size`` (last one short unless
    ``drop_last``)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    stop = n - n % batch_size if drop_last else n
    return [slice(i, min(i + batch_size, stop)) for i in range(0, stop, batch_size)]


def start_batch_of(start_batch: int, batches: int) -> int:
    """``start_batch`` checked against an epoch of ``batches`` batches: resuming past the end
    of an epoch is a mistake in the caller's bookkeeping, not an empty epoch."""
    if isinstance(start_batch, bool) or not 0 <= int(start_batch) <= batches:
        raise ValueError(
            f"start_batch must be in 0..{batches} (batches per epoch), got {start_batch!r}"
        )
    return int(start_batch)
