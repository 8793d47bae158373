"""PyTorch adapter: a map-style :class:`ShardDataset` and epoch-aware samplers.

Importing this module imports ``torch``; ``ipmix_cli.readers`` itself does not.

A batch is ``(images, labels, *extras)``: ``images`` is a (B, H, W, 3) uint8 tensor by default
(see :class:`~ipmix_cli.readers.ShardReader` for float / normalise / CHW options), or for a
``--jsd`` output the tuple ``(clean, images, images2)``, which is exactly what the AugMix
reference training loop unpacks (``images_all = torch.cat(images, 0)``).

Why the samplers: an output holds ``copies`` augmented copies of every input, laid out
copy-major. :class:`ShardSampler` makes epoch ``e`` read copy ``e % copies`` of every image, in
a seeded order, split disjointly over ranks; it is the sampler to use, with or without
distributed training. :class:`CopySampler` adds the same copy selection to any sampler over
input indices, e.g. a ``DistributedSampler`` you already have. Both run in the main process
and hand row numbers to the workers, so they are right with ``num_workers > 0`` and
``persistent_workers=True`` (where a dataset attribute changed in the main process would not
reach the workers).

Each pass over a sampler advances it to the next epoch; ``set_epoch(e)`` (the
``DistributedSampler`` idiom) pins the next pass to epoch ``e``. Forgetting ``set_epoch``
therefore still gives fresh copies every epoch instead of silently replaying copy 0.

Two ways to batch, both with batched shard reads:

* ``DataLoader(ds, batch_size=B, sampler=ShardSampler(ds), num_workers=...)``: the standard
  form; PyTorch passes each batch's indices to ``ds.__getitems__`` (one grouped read) and
  stacks the rows with the default collate function.
* ``ds.loader(B, num_workers=...)``: the sampler yields whole batches of rows and each worker
  returns ready batch tensors; it skips per-row collation (fastest).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ipmix_cli.readers.numpy_reader import ShardReader
from ipmix_cli.readers.plan import EpochPlan, Even, batch_slices, even_for
from ipmix_cli.shards.layout import row_of

__all__ = ["CopySampler", "ShardBatchSampler", "ShardDataset", "ShardSampler"]


def _tensors(value: Any) -> Any:
    """numpy arrays (possibly in tuples) -> tensors sharing their memory."""
    if isinstance(value, tuple):
        return tuple(_tensors(v) for v in value)
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    return torch.as_tensor(value)


class ShardDataset(Dataset):
    """Map-style dataset over every row of an ipmix output (``len`` = copies x sources).

    ``source`` is the entry file path or an open :class:`ShardReader`; ``reader_options`` go to
    :class:`ShardReader` (``views``, ``extras``, ``dtype``, ``normalize``, ``channels_first``,
    ...). ``ds[i]`` is one row, ``ds[[i, j, ...]]`` (or an array / tensor of rows) one batch,
    both as tensors. Files are opened lazily in each worker; the dataset pickles small.
    """

    def __init__(self, source: str | os.PathLike[str] | ShardReader, **reader_options: Any):
        if isinstance(source, ShardReader):
            if reader_options:
                raise TypeError("pass reader options to ShardReader, not with a reader")
            self.reader = source
        else:
            self.reader = ShardReader(source, **reader_options)

    def __len__(self) -> int:
        return len(self.reader)

    @property
    def num_sources(self) -> int:
        """Input images per copy: the rows one epoch reads."""
        return self.reader.num_sources

    @property
    def copies(self) -> int:
        """Augmented copies of each input held by the output."""
        return self.reader.copies

    @property
    def class_names(self) -> list[str]:
        """Label id -> class name, from the output's manifest."""
        return self.reader.class_names

    def __getitem__(self, index: Any) -> tuple[Any, ...]:
        if isinstance(index, (int, np.integer)) or (
            isinstance(index, torch.Tensor) and index.ndim == 0
        ):
            return _tensors(self.reader[int(index)])
        if isinstance(index, torch.Tensor):
            index = index.numpy()
        return _tensors(self.reader.read_batch(index))

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Any, ...]]:
        """Rows for PyTorch's batched fetch: one grouped read, then per-row views that the
        default collate function stacks."""
        batch = _tensors(self.reader.read_batch(np.asarray(indices, dtype=np.int64)))
        return [_row(batch, i) for i in range(len(indices))]

    def sampler(self, **options: Any) -> ShardSampler:
        """A :class:`ShardSampler` over this dataset (same options)."""
        return ShardSampler(self, **options)

    def loader(
        self,
        batch_size: int,
        *,
        epoch: int = 0,
        drop_last: bool = False,
        even: Even | Literal["auto"] = "auto",
        **options: Any,
    ) -> DataLoader:
        """A ``DataLoader`` whose workers read whole batches (no per-row collation).

        ``options`` are the epoch plan's (``shuffle``, ``seed``, ``rank``, ``world_size``,
        ``epoch_mode``; see :class:`~ipmix_cli.readers.plan.EpochPlan`) and ``DataLoader``'s
        (``num_workers``, ``pin_memory``, ``persistent_workers``, ``prefetch_factor``, ...).
        ``loader.sampler`` is a :class:`ShardBatchSampler`: call
        ``loader.sampler.set_epoch(e)`` (or let each pass advance it).
        """
        plan_options, dataloader_options = EpochPlan.split_options(options)
        sampler = ShardBatchSampler(
            self, batch_size, epoch=epoch, drop_last=drop_last, even=even, **plan_options
        )
        return DataLoader(self, sampler=sampler, batch_size=None, **dataloader_options)


def _row(batch: tuple[Any, ...], i: int) -> tuple[Any, ...]:
    return tuple(_row(v, i) if isinstance(v, tuple) else v[i] for v in batch)


def _reader(data_source: Any) -> ShardReader:
    reader = getattr(data_source, "reader", data_source)
    if not isinstance(reader, ShardReader):
        raise TypeError(f"expected a ShardDataset or ShardReader, got {type(data_source)}")
    return reader


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit values, else the initialised process group's, else a single process."""
    dist = torch.distributed
    group = dist.is_available() and dist.is_initialized()
    if world_size is None:
        world_size = dist.get_world_size() if group else 1
    if rank is None:
        rank = dist.get_rank() if group else 0
    return int(rank), int(world_size)


class ShardSampler(Sampler[int]):
    """Rows of one epoch per pass: copy ``epoch % copies`` (``epoch_mode="copy"``) or every
    row (``"all"``), shuffled with ``(seed, epoch)``, this rank's disjoint share; the plan
    options are those of :class:`~ipmix_cli.readers.plan.EpochPlan`.

    ``rank`` / ``world_size`` default to the initialised ``torch.distributed`` group (else one
    process). ``even="auto"`` behaves like ``DistributedSampler``: with several ranks every
    rank gets the same number of rows (``drop_last`` drops the remainder, else the first rows
    are repeated to fill), so no rank waits forever on a last batch; ``even=None`` keeps ranks
    strictly disjoint and covering (sizes may differ by one).
    """

    def __init__(
        self,
        data_source: ShardDataset | ShardReader,
        *,
        epoch: int = 0,
        drop_last: bool = False,
        even: Even | Literal["auto"] = "auto",
        rank: int | None = None,
        world_size: int | None = None,
        **options: Any,
    ) -> None:
        self.reader = _reader(data_source)
        rank, world_size = _rank_and_world(rank, world_size)
        self.plan = self.reader.plan(
            rank=rank, world_size=world_size, even=even_for(even, world_size, drop_last), **options
        )
        self.epoch = int(epoch)
        self.drop_last = drop_last

    @property
    def rank(self) -> int:
        return self.plan.rank

    @property
    def world_size(self) -> int:
        return self.plan.world_size

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass read epoch ``epoch`` (later passes continue from there)."""
        self.epoch = int(epoch)

    def rows(self, epoch: int) -> np.ndarray:
        """The rows this rank reads in ``epoch``, in order."""
        return self.plan.rows(epoch)

    def next_rows(self) -> np.ndarray:
        """Rows of the current epoch, then advance to the next epoch."""
        rows = self.rows(self.epoch)
        self.epoch += 1
        return rows

    def __iter__(self) -> Iterator[int]:
        return iter(self.next_rows().tolist())

    def __len__(self) -> int:
        return self.plan.rows_per_epoch()


class ShardBatchSampler(Sampler[np.ndarray]):
    """Batches of rows (int64 arrays) of a :class:`ShardSampler`'s epochs, for
    ``DataLoader(ds, sampler=..., batch_size=None)`` where ``ds[rows]`` returns whole batch
    tensors. ``drop_last`` drops a short last batch (and, with several ranks, evens them)."""

    def __init__(
        self, data_source: ShardDataset | ShardReader, batch_size: int, **sampler_options: Any
    ) -> None:
        self.sampler = ShardSampler(data_source, **sampler_options)
        self.batch_size = int(batch_size)
        batch_slices(0, self.batch_size)  # validate

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass read epoch ``epoch``."""
        self.sampler.set_epoch(epoch)

    @property
    def epoch(self) -> int:
        """The epoch the next pass reads."""
        return self.sampler.epoch

    def __iter__(self) -> Iterator[np.ndarray]:
        rows = self.sampler.next_rows()
        for part in batch_slices(len(rows), self.batch_size, self.sampler.drop_last):
            yield rows[part]

    def __len__(self) -> int:
        return len(batch_slices(len(self.sampler), self.batch_size, self.sampler.drop_last))


class CopySampler(Sampler[int]):
    """Copy selection on top of a sampler over *input* indices ``0 .. num_sources - 1``.

    ``base`` is typically ``DistributedSampler(range(ds.num_sources), ...)``: it decides order
    and rank split, this maps each input index ``s`` of epoch ``e`` to row
    ``(e % copies) * num_sources + s``. ``set_epoch`` is forwarded to ``base``; each pass
    advances the epoch (and tells ``base``) like :class:`ShardSampler`.

    (``DistributedSampler(ds)`` over the dataset itself also works, with no copy selection:
    each of its epochs then covers every row of every copy.)
    """

    def __init__(self, base: Sampler[int], data_source: ShardDataset | ShardReader) -> None:
        self.base = base
        self.reader = _reader(data_source)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass read epoch ``epoch`` (forwarded to ``base``)."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        epoch = self.epoch
        self.epoch += 1
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)
        n = self.reader.num_sources
        copy = epoch % self.reader.copies
        for source in self.base:
            s = int(source)
            if not 0 <= s < n:
                raise IndexError(f"base sampler gave input index {s}, outside 0..{n - 1}")
            yield row_of(copy, s, n)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]
