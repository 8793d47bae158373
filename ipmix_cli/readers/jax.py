"""JAX adapter: numpy batches ready for ``jax.device_put``, and grain sources.

JAX has no data loader of its own; the usual pattern is a host-side iterator of numpy batches
that the training step moves to the devices. :func:`batches` is that iterator: epoch / copy
selection, seeded shuffle, this host's share of every epoch, and a background thread reading
ahead (file reads release the GIL, so they overlap with the step). Optionally it places each
batch itself (``device_put=True`` or a ``jax.sharding.Sharding``).

Defaults suit ``jit``: ``drop_last=True`` (static shapes, no recompilation for a short last
batch) and, across hosts, ``even="pad"`` so every process runs the same number of steps;
``rank`` / ``world_size`` default to ``jax.process_index()`` / ``jax.process_count()``.

For grain users: :class:`GrainSource` is a grain random-access data source (``__len__``,
``__getitem__`` and grain's batched ``_getitems``) over every row, and :func:`grain_dataset`
a ``grain.MapDataset`` of ready batches that follows the same epoch / copy plan as everything
else here. Neither needs grain to be imported by this module (grain is imported only inside
:func:`grain_dataset`); ``jax`` is imported only when a default or ``device_put`` needs it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from ipmix_cli.readers.numpy_reader import ShardReader
from ipmix_cli.readers.plan import EpochPlan, Even, batch_slices, start_batch_of
from ipmix_cli.readers.readahead import prefetch

__all__ = ["GrainSource", "batches", "grain_dataset"]


def _reader(source: str | os.PathLike[str] | ShardReader, options: dict[str, Any]) -> ShardReader:
    if isinstance(source, ShardReader):
        if options:
            raise TypeError("pass reader options to ShardReader, not with a reader")
        return source
    return ShardReader(source, **options)


def _process(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit values, else JAX's process index and count (multi-host), else one process
    (also when JAX is not installed: the numpy batches and grain sources do not need it)."""
    if rank is None or world_size is None:
        try:
            import jax
        except ImportError:
            index, count = 0, 1
        else:
            index, count = jax.process_index(), jax.process_count()
        rank = index if rank is None else rank
        world_size = count if world_size is None else world_size
    return int(rank), int(world_size)


def _placer(device_put: Any) -> Any:
    if device_put is None or device_put is False:
        return None
    import jax

    if device_put is True:
        return jax.device_put
    sharding = device_put

    def place(batch: Any) -> Any:  # per-process data -> a global array laid out by `sharding`
        return jax.tree_util.tree_map(
            lambda x: jax.make_array_from_process_local_data(sharding, x), batch
        )

    return place


def batches(
    source: str | os.PathLike[str] | ShardReader,
    batch_size: int,
    epoch: int = 0,
    *,
    start_batch: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    drop_last: bool = True,
    even: Even = "pad",
    prefetch_batches: int = 2,
    device_put: Any = None,
    **options: Any,
) -> Iterator[tuple[Any, ...]]:
    """Batches ``(images, labels, *extras)`` of one epoch for this process.

    ``images`` is (B, H, W, 3) ``uint8`` numpy by default (or ``(clean, images, images2)`` for
    a ``--jsd`` output). ``options`` are the epoch plan's (``shuffle``, ``seed``,
    ``epoch_mode``; see :class:`~ipmix_cli.readers.plan.EpochPlan`) and, with a path, the
    reader's. ``start_batch`` resumes a preempted epoch: the iterator begins with batch
    ``start_batch`` of epoch ``epoch`` (the number of batches consumed before), exactly as an
    uninterrupted run would have gone on. ``prefetch_batches`` batches are read ahead in a
    thread (0: none).
    ``device_put``: ``None`` yields numpy, ``True`` calls ``jax.device_put`` on each batch, a
    ``Sharding`` builds global arrays with ``jax.make_array_from_process_local_data`` (the
    batch is this process's share).
    """
    plan_options, reader_options = EpochPlan.split_options(options)
    reader = _reader(source, reader_options)
    rank, world_size = _process(rank, world_size)
    plan = reader.plan(rank=rank, world_size=world_size, even=even, **plan_options)
    place = _placer(device_put)

    parts = plan.batch_rows(epoch, batch_size, drop_last)
    first = start_batch_of(start_batch, len(parts))
    parts = parts[first:]

    def read_all() -> Iterator[tuple[Any, ...]]:
        reader.prefetch_epoch(plan, epoch, first * batch_size, force=True)  # bucket outputs
        for rows in parts:
            yield reader.read_batch(rows)

    for batch in prefetch(read_all(), prefetch_batches):
        yield batch if place is None else place(batch)


class GrainSource:
    """A grain random-access data source over every row of an output (``len`` = rows).

    Records are dicts of numpy arrays keyed by view name (``images``, and ``clean`` /
    ``images2`` for JSD), ``labels`` and the extras. grain's batched ``_getitems`` reads many
    records with one grouped read. Picklable (grain's worker processes re-open the files).
    Use it with ``grain.MapDataset.source(src)`` or ``grain.DataLoader(data_source=src, ...)``;
    note that grain's own samplers shuffle all rows of all copies together (``epoch_mode="all"``
    in this package's terms); :func:`grain_dataset` keeps the per-epoch copy plan.
    """

    def __init__(self, source: str | os.PathLike[str] | ShardReader, **reader_options: Any):
        self.reader = _reader(source, reader_options)

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, record_key: int) -> dict[str, np.ndarray]:
        arrays = self.reader.read([int(record_key)])
        return {k: v[0] for k, v in arrays.items()}

    def _getitems(self, record_keys: Any) -> list[dict[str, np.ndarray]]:
        arrays = self.reader.read(np.asarray(record_keys, dtype=np.int64))
        return [{k: v[i] for k, v in arrays.items()} for i in range(len(record_keys))]

    def __repr__(self) -> str:
        return f"GrainSource({self.reader!r})"


def grain_dataset(
    source: str | os.PathLike[str] | ShardReader,
    batch_size: int,
    *,
    epoch: int = 0,
    epochs: int = 1,
    start_batch: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    drop_last: bool = True,
    even: Even = "pad",
    **options: Any,
) -> Any:
    """A ``grain.MapDataset`` whose item ``i`` is batch ``i`` of epochs ``epoch ..
    epoch + epochs - 1`` (same plan and options as :func:`batches`).

    ``start_batch`` drops the first batches of epoch ``epoch`` (a resume; grain's own
    checkpointing of ``to_iter_dataset`` iterators works too). Random access by step number
    makes it checkpointable and resumable the grain way; call
    ``.to_iter_dataset(grain.ReadOptions(num_threads=..., prefetch_buffer_size=...))`` for
    threaded read-ahead. Items are ``(images, labels, *extras)`` tuples of numpy arrays.
    """
    import grain

    plan_options, reader_options = EpochPlan.split_options(options)
    reader = _reader(source, reader_options)
    rank, world_size = _process(rank, world_size)
    plan = reader.plan(rank=rank, world_size=world_size, even=even, **plan_options)
    slices = batch_slices(plan.rows_per_epoch(), batch_size, drop_last)
    steps = len(slices) * int(epochs)
    first = start_batch_of(start_batch, len(slices))
    return grain.MapDataset.range(first, steps).map(_ReadStep(reader, plan, epoch, slices))


class _ReadStep:
    """Step number -> batch (a picklable callable for ``MapDataset.map``)."""

    def __init__(
        self, reader: ShardReader, plan: EpochPlan, first: int, slices: list[slice]
    ) -> None:
        self.reader, self.plan, self.first, self.slices = reader, plan, first, slices

    def __call__(self, step: int) -> tuple[Any, ...]:
        e, b = divmod(int(step), len(self.slices))
        self.reader.prefetch_epoch(self.plan, self.first + e)  # once an epoch (bucket outputs)
        return self.reader.read_batch(self.plan.rows(self.first + e)[self.slices[b]])
