"""PyTorch adapter: a torchvision-like :class:`ShardDataset`, epoch-aware samplers, and a
resumable :class:`ShardLoader`.

Importing this module imports ``torch``; ``ipmix_cli.readers`` itself does not.

A sample is ``(image, label, *extras)``: ``image`` is a (H, W, 3) uint8 tensor by default
(see :class:`~ipmix_cli.readers.ShardReader` for float / normalise / CHW options), or for a
``--jsd`` output the tuple ``(clean, image, image2)``, which batched is exactly what the AugMix
reference training loop unpacks (``images_all = torch.cat(images, 0)``).

**One copy per epoch, with a plain DataLoader.** An output holds ``copies`` augmented copies
of every input, laid out copy-major. ``ShardDataset`` behaves like a torchvision dataset of the
*inputs*: ``len(ds)`` is the number of sources and ``ds[i]`` is source ``i`` in copy
``epoch % copies``, so ``DataLoader(ds, shuffle=True, num_workers=k)`` reads every image once
per epoch and an epoch-based schedule runs at the right pace. ``ds.set_epoch(e)`` picks the
copy. The epoch lives in shared memory that workers map too (forked or spawned), so it
reaches them even with ``persistent_workers=True``. ``epoch_mode="all"`` keeps the old
behaviour: every row of every copy is an item.

**Samplers.** :class:`ShardSampler` makes epoch ``e`` read copy ``e % copies`` in a seeded
order, split disjointly over ranks; :class:`CopySampler` adds the same copy selection to any
sampler over input indices (e.g. a ``DistributedSampler`` you already have). Both run in the
main process and hand the workers output row numbers (tagged :class:`OutputRow`, so the
dataset does not remap them through its own epoch). Each pass over a sampler advances it to
the next epoch, so forgetting ``set_epoch`` still gives fresh copies every epoch.

**Resume.** :class:`ShardLoader` (what ``ds.loader()`` returns; a ``DataLoader``) has
``state_dict()`` / ``load_state_dict()`` in torchdata's ``StatefulDataLoader`` spirit: the
state is the epoch and the number of samples the training loop has *received* (not the ones
workers prefetched), so a loader restored in a new process yields exactly the batches an
uninterrupted epoch would have yielded next, on every rank.

Two ways to batch, both with batched shard reads:

* ``DataLoader(ds, batch_size=B, sampler=ShardSampler(ds), num_workers=...)`` (or plain
  ``shuffle=True``): PyTorch passes each batch's indices to ``ds.__getitems__`` (one grouped
  read) and stacks the rows with the default collate function.
* ``ds.loader(B, num_workers=...)``: the sampler yields whole batches of rows and each worker
  returns ready batch tensors; it skips per-row collation (fastest) and is resumable.
"""

from __future__ import annotations

import mmap
import os
import struct
import tempfile
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ipmix_cli.readers.numpy_reader import ShardReader
from ipmix_cli.readers.plan import EpochMode, EpochPlan, Even, batch_slices, even_for
from ipmix_cli.shards.layout import row_of

__all__ = [
    "CopySampler",
    "OutputRow",
    "OutputRows",
    "ShardBatchSampler",
    "ShardDataset",
    "ShardLoader",
    "ShardSampler",
]


class OutputRow(int):
    """An output row number (``copy * num_sources + source``) as the samplers yield it: a
    :class:`ShardDataset` reads it as is, whatever its own epoch and mode."""

    __slots__ = ()


class OutputRows:
    """A batch of output rows (int64) as :class:`ShardBatchSampler` yields it; picklable."""

    __slots__ = ("rows",)

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> tuple[np.ndarray]:
        return (self.rows,)

    def __setstate__(self, state: tuple[np.ndarray]) -> None:
        (self.rows,) = state


class _SharedEpoch:
    """An int in shared memory: written in the main process, read by DataLoader workers,
    persistent ones included, however they start.

    It lives in a deleted temporary file (so nothing is left behind, whatever happens to the
    process). Forked workers share the mapping; a pickled copy (spawn or forkserver workers)
    re-opens the same file through ``/proc/<pid>/fd/<fd>`` of the process that made it. Where
    that is impossible (no ``/proc``, another user, the maker gone) the copy keeps the value
    it was pickled with, as any pickled attribute would. ``slots`` ints in all (``get`` /
    ``set``); ``value`` is the first."""

    def __init__(self, value: int = 0, slots: int = 1) -> None:
        self._link: str | None = None
        self._slots = max(1, int(slots))
        try:
            fd, path = tempfile.mkstemp(prefix="ipmix-epoch-")
        except OSError:
            self._map = mmap.mmap(-1, 8 * self._slots)
        else:
            os.unlink(path)
            os.ftruncate(fd, 8 * self._slots)
            self._map = mmap.mmap(fd, 8 * self._slots)
            self._link = f"/proc/{os.getpid()}/fd/{fd}"
            weakref.finalize(self, os.close, fd)
        self.value = value

    def get(self, slot: int) -> int:
        return struct.unpack_from("<q", self._map, 8 * slot)[0]

    def set(self, slot: int, value: int) -> None:
        struct.pack_into("<q", self._map, 8 * slot, int(value))

    @property
    def value(self) -> int:
        return struct.unpack_from("<q", self._map, 0)[0]

    @value.setter
    def value(self, value: int) -> None:
        struct.pack_into("<q", self._map, 0, int(value))

    def __getstate__(self) -> dict[str, Any]:
        values = [self.get(i) for i in range(self._slots)]
        return {"value": self.value, "link": self._link, "values": values}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._link = state["link"]
        values = state.get("values", [state["value"]])
        self._slots = len(values)
        try:
            fd = os.open(self._link, os.O_RDWR) if self._link else -1
        except OSError:
            fd = -1
        if fd < 0:
            self._link = None
            self._map = mmap.mmap(-1, 8 * self._slots)
            for i, v in enumerate(values):
                self.set(i, v)
            return
        try:
            self._map = mmap.mmap(fd, 8 * self._slots)
        finally:
            os.close(fd)  # the mapping holds its own reference


def _tensors(value: Any) -> Any:
    """numpy arrays (possibly in tuples) -> tensors sharing their memory."""
    if isinstance(value, tuple):
        return tuple(_tensors(v) for v in value)
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    return torch.as_tensor(value)


def _row(batch: tuple[Any, ...], i: int) -> tuple[Any, ...]:
    return tuple(_row(v, i) if isinstance(v, tuple) else v[i] for v in batch)


def _stack(items: list[Any]) -> Any:
    """Per-sample values -> one batch value: tuples field by field, tensors stacked, numbers
    as a tensor, anything else (what a target_transform made) as a list."""
    first = items[0]
    if isinstance(first, tuple):
        return tuple(_stack([item[k] for item in items]) for k in range(len(first)))
    if isinstance(first, torch.Tensor):
        return torch.stack(items)
    if isinstance(first, (int, float, np.number)):
        return torch.as_tensor(items)
    return list(items)


class ShardDataset(Dataset):
    """A torchvision-style map dataset over an ipmix output: one copy of every source per epoch.

    ``source`` is the entry file path, an ``s3://`` entry object, or an open
    :class:`ShardReader`; ``reader_options`` go to :class:`ShardReader` (``views``, ``extras``,
    ``dtype``, ``normalize``, ``channels_first``, ``cache_dir``, ``cache_limit``, ...).

    * ``epoch_mode="copy"`` (default): ``len(ds) == num_sources``; ``ds[i]`` is source ``i`` in
      copy ``epoch % copies``, the epoch set by :meth:`set_epoch`. ``"all"``: every row of every
      copy is an item (``len == copies * num_sources``).
    * ``classes`` / ``class_to_idx`` / ``targets`` as torchvision's ``ImageFolder`` has them.
    * ``transform`` is called on each sample's image as the reader returns it: a (H, W, 3)
      uint8 tensor, or (3, H, W) with ``channels_first=True``, which is what
      ``torchvision.transforms.v2`` expects; for a JSD output on each of the three views.
      ``target_transform`` is called on the label as a Python ``int``.

    ``ds[i]`` is one sample and ``ds[[i, j, ...]]`` (or an array / tensor) a stacked batch,
    both as tensors. Files are opened lazily in each worker; the dataset pickles small.
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | ShardReader,
        *,
        epoch_mode: EpochMode = "copy",
        epoch: int = 0,
        transform: Callable[[Any], Any] | None = None,
        target_transform: Callable[[int], Any] | None = None,
        **reader_options: Any,
    ):
        if isinstance(source, ShardReader):
            if reader_options:
                raise TypeError("pass reader options to ShardReader, not with a reader")
            self.reader = source
        else:
            self.reader = ShardReader(source, **reader_options)
        if epoch_mode not in ("copy", "all"):
            raise ValueError(f"epoch_mode must be 'copy' or 'all', got {epoch_mode!r}")
        self.epoch_mode: EpochMode = epoch_mode
        self._epoch = _SharedEpoch(_epoch(epoch))
        self.transform = transform
        self.target_transform = target_transform

    # -- torchvision-style description ---------------------------------------------------------

    def __len__(self) -> int:
        return self.num_sources if self.epoch_mode == "copy" else len(self.reader)

    def __repr__(self) -> str:
        return (
            f"ShardDataset({str(self.reader.path)!r}, {len(self)} items, "
            f"epoch_mode={self.epoch_mode!r}, epoch={self.epoch}, {self.copies} copies)"
        )

    @property
    def num_sources(self) -> int:
        """Input images per copy: the items one epoch reads."""
        return self.reader.num_sources

    @property
    def copies(self) -> int:
        """Augmented copies of each input held by the output."""
        return self.reader.copies

    @property
    def class_names(self) -> list[str]:
        """Label id -> class name, from the output's manifest."""
        return self.reader.class_names

    @property
    def class_labels(self) -> list[str]:
        """Human label per class id (``--classes`` map), else the class names."""
        return self.reader.class_labels

    @property
    def classes(self) -> list[str]:
        """torchvision's name for :attr:`class_names`."""
        return list(self.reader.class_names)

    @property
    def class_to_idx(self) -> dict[str, int]:
        """Class name -> label id."""
        return {name: i for i, name in enumerate(self.reader.class_names)}

    @property
    def targets(self) -> list[int]:
        """Every item's label, in item order (e.g. for a ``WeightedRandomSampler``); the copies
        of a source share its label, so in ``"copy"`` mode this is the same for every epoch."""
        labels = self.reader.labels
        return (labels[: self.num_sources] if self.epoch_mode == "copy" else labels).tolist()

    # -- epochs --------------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """The epoch whose copy ``ds[i]`` reads (``"copy"`` mode)."""
        return self._epoch.value

    def set_epoch(self, epoch: int) -> None:
        """Read copy ``epoch % copies`` from now on, in this process and in its DataLoader
        workers (also persistent ones); call it before iterating the epoch's loader."""
        self._epoch.value = _epoch(epoch)

    def rows_of(self, indices: Any) -> np.ndarray:
        """Output rows of item indices (int64), through the epoch's copy in ``"copy"`` mode."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"index out of range for {n} items")
        idx = np.where(idx < 0, idx + n, idx)
        if self.epoch_mode == "all":
            return idx
        return row_of(self.epoch % self.copies, idx, self.num_sources)

    def _batch_rows(self, index: Any) -> np.ndarray:
        if isinstance(index, OutputRows):
            return index.rows
        if isinstance(index, torch.Tensor):
            index = index.numpy()
        if (
            isinstance(index, (list, tuple))
            and index
            and all(isinstance(i, OutputRow) for i in index)
        ):
            return np.asarray(index, dtype=np.int64)
        return self.rows_of(index)

    # -- reading -------------------------------------------------------------------------------

    def _sample(self, sample: tuple[Any, ...]) -> tuple[Any, ...]:
        images, label, *extras = sample
        if self.transform is not None:
            if isinstance(images, tuple):
                images = tuple(self.transform(view) for view in images)
            else:
                images = self.transform(images)
        if self.target_transform is not None:
            label = self.target_transform(int(label))
        return (images, label, *extras)

    def _samples(self, rows: np.ndarray) -> list[tuple[Any, ...]]:
        batch = _tensors(self.reader.read_batch(rows))
        return [self._sample(_row(batch, i)) for i in range(len(rows))]

    def __getitem__(self, index: Any) -> tuple[Any, ...]:
        single = isinstance(index, (int, np.integer)) or (
            isinstance(index, torch.Tensor) and index.ndim == 0
        )
        if single:
            row = int(index) if isinstance(index, OutputRow) else int(self.rows_of([int(index)])[0])
            return self._sample(_tensors(self.reader[row]))
        rows = self._batch_rows(index)
        if self.transform is None and self.target_transform is None:
            return _tensors(self.reader.read_batch(rows))
        return _stack(self._samples(rows))

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Any, ...]]:
        """Samples for PyTorch's batched fetch: one grouped read, then per-sample views (and
        transforms) that the default collate function stacks."""
        return self._samples(self._batch_rows(list(indices)))

    # -- samplers and loaders ------------------------------------------------------------------

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
    ) -> ShardLoader:
        """A resumable :class:`ShardLoader` whose workers read whole batches (no per-row
        collation).

        ``options`` are the epoch plan's (``shuffle``, ``seed``, ``rank``, ``world_size``,
        ``epoch_mode``; see :class:`~ipmix_cli.readers.plan.EpochPlan`; ``epoch_mode`` defaults
        to this dataset's) and ``DataLoader``'s (``num_workers``, ``pin_memory``,
        ``persistent_workers``, ``prefetch_factor``, ...). ``loader.sampler`` is a
        :class:`ShardBatchSampler`: call ``loader.set_epoch(e)`` (or let each pass advance it).
        """
        plan_options, dataloader_options = EpochPlan.split_options(options)
        plan_options.setdefault("epoch_mode", self.epoch_mode)
        sampler = ShardBatchSampler(
            self, batch_size, epoch=epoch, drop_last=drop_last, even=even, **plan_options
        )
        return ShardLoader(self, sampler=sampler, batch_size=None, **dataloader_options)


def _epoch(epoch: int) -> int:
    epoch = int(epoch)
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    return epoch


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

    ``state_dict()`` is the start of the pass in progress (or of the next one) and
    ``load_state_dict`` / :meth:`resume` make the next pass start there; the samples a training
    loop has received are counted by :class:`ShardLoader`, which runs behind this sampler when
    workers prefetch.

    With an output in a bucket, each pass's start is published in shared memory so the
    DataLoader workers (forked or spawned, persistent too) prefetch the pass's shards in the
    order its rows first touch them (:meth:`ShardReader.follow`): make the sampler before the
    loader starts its workers.
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
        self.epoch = _epoch(epoch)
        self.drop_last = drop_last
        self._start = 0  # first row of the next pass
        self.current: tuple[int, int] | None = None  # (epoch, start) of the last pass begun
        self._passes: _SharedEpoch | None = None  # (pass number, epoch, start) for prefetch
        if self.reader.remote:
            self._passes = _SharedEpoch(0, slots=3)
            self.reader.follow(self.plan, self._passes)

    @property
    def rank(self) -> int:
        return self.plan.rank

    @property
    def world_size(self) -> int:
        return self.plan.world_size

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass read epoch ``epoch`` from its start (later passes continue from
        there)."""
        self.epoch = _epoch(epoch)
        self._start = 0

    def resume(self, epoch: int, start: int) -> None:
        """Make the next pass read epoch ``epoch`` from its row ``start`` on."""
        if not 0 <= int(start) <= len(self):
            raise ValueError(f"start must be in 0..{len(self)}, got {start}")
        self.epoch, self._start = _epoch(epoch), int(start)

    @property
    def next_pass(self) -> tuple[int, int]:
        """``(epoch, first row)`` the next pass will read."""
        return self.epoch, self._start

    def rows(self, epoch: int) -> np.ndarray:
        """The rows this rank reads in ``epoch``, in order."""
        return self.plan.rows(epoch)

    def next_rows(self) -> np.ndarray:
        """Rows of the current epoch (from the resume point), then advance to the next
        epoch."""
        self.current = self.next_pass
        rows = self.rows(self.epoch)[self._start :]
        if self._passes is not None:  # the pass number last: readers see a whole pass
            self._passes.set(1, self.epoch)
            self._passes.set(2, self._start)
            self._passes.set(0, self._passes.get(0) + 1)
        self.epoch += 1
        self._start = 0
        return rows

    def __iter__(self) -> Iterator[int]:
        # a generator, so that DataLoader's extra iter() calls begin no pass
        for row in self.next_rows().tolist():
            yield OutputRow(row)

    def __len__(self) -> int:
        return self.plan.rows_per_epoch()

    def identity(self) -> dict[str, Any]:
        """What a saved position is only valid for: the output (its data, not only its shape:
        two runs of one input with other seeds have the same shape) and the plan."""
        return {
            **self.plan.__getstate__(),
            "drop_last": self.drop_last,
            "output": self.reader.data_identity,
        }

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch", "start"}`` of the pass in progress (else of the next pass)."""
        epoch, start = self.current if self.current is not None else self.next_pass
        return {"epoch": epoch, "start": start}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next pass start where ``state`` says."""
        self.resume(state["epoch"], state["start"])
        self.current = None


class ShardBatchSampler(Sampler[OutputRows]):
    """Batches of rows of a :class:`ShardSampler`'s epochs, for
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

    def __iter__(self) -> Iterator[OutputRows]:
        rows = self.sampler.next_rows()
        for part in batch_slices(len(rows), self.batch_size, self.sampler.drop_last):
            yield OutputRows(rows[part])

    def __len__(self) -> int:
        return len(batch_slices(len(self.sampler), self.batch_size, self.sampler.drop_last))

    def state_dict(self) -> dict[str, Any]:
        """See :meth:`ShardSampler.state_dict`."""
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """See :meth:`ShardSampler.load_state_dict`."""
        self.sampler.load_state_dict(state)


class ShardLoader(DataLoader):
    """A ``DataLoader`` over a :class:`ShardSampler` or :class:`ShardBatchSampler` that can be
    saved and restored in the middle of an epoch.

    ``state_dict()`` is ``{"epoch", "samples", "plan"}``: the epoch in progress and how many of
    its samples this process's training loop has received (prefetched batches do not count),
    plus the plan it is valid for. ``load_state_dict(state)`` (on a loader built the same way,
    e.g. in a new process after preemption) makes the next pass yield exactly the rest of that
    epoch; passes after it continue with the following epochs. Each rank saves and loads its
    own state. Built by :meth:`ShardDataset.loader`, or directly:
    ``ShardLoader(ds, batch_size=B, sampler=ShardSampler(ds), num_workers=...)``.
    """

    def __init__(self, dataset: ShardDataset, *args: Any, **kwargs: Any) -> None:
        super().__init__(dataset, *args, **kwargs)
        if not isinstance(self.sampler, (ShardSampler, ShardBatchSampler)):
            raise TypeError(
                "ShardLoader needs sampler=ShardSampler(ds) or ShardBatchSampler(ds, B), got "
                f"{type(self.sampler).__name__}"
            )
        self._progress: list[int] | None = None  # [epoch, samples received] of a live pass

    def _rows_sampler(self) -> ShardSampler:
        sampler = self.sampler
        return sampler.sampler if isinstance(sampler, ShardBatchSampler) else sampler

    def _batch(self) -> int:
        sampler = self.sampler
        return sampler.batch_size if isinstance(sampler, ShardBatchSampler) else self.batch_size

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass read epoch ``epoch`` from its start."""
        self._rows_sampler().set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:
        progress = list(self._rows_sampler().next_pass)  # where this pass starts
        iterator = super().__iter__()
        self._progress = progress
        return self._count(iterator, progress, len(self._rows_sampler()))

    def _count(self, iterator: Iterator[Any], progress: list[int], total: int) -> Iterator[Any]:
        step = self._batch() or 1
        for batch in iterator:
            progress[1] = min(total, progress[1] + step)
            yield batch
        if self._progress is progress:
            self._progress = None  # epoch done: the state is the next epoch's start

    def state_dict(self) -> dict[str, Any]:
        """Where this process's training loop stands: ``{"epoch", "samples", "plan"}``."""
        live = self._progress
        epoch, samples = live if live is not None else self._rows_sampler().next_pass
        return {"epoch": int(epoch), "samples": int(samples), "plan": self._plan_identity()}

    def _plan_identity(self) -> dict[str, Any]:
        """What a saved state is only valid for: the sampler's plan and the batch size."""
        return {**self._rows_sampler().identity(), "batch_size": self._batch()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from ``state`` (see :meth:`state_dict`); refuses a state saved for another
        output, plan or batch size, which would silently replay or skip samples."""
        plan = self._plan_identity()
        saved = state.get("plan", {})
        differ = sorted(k for k in plan if k in saved and saved[k] != plan[k])
        if differ:
            details = ", ".join(f"{k} {saved[k]!r} vs {plan[k]!r}" for k in differ)
            raise ValueError(f"this loader state was saved for another plan: {details}")
        self._rows_sampler().load_state_dict({"epoch": state["epoch"], "start": state["samples"]})
        self._progress = None


class CopySampler(Sampler[int]):
    """Copy selection on top of a sampler over *input* indices ``0 .. num_sources - 1``.

    ``base`` is typically ``DistributedSampler(range(ds.num_sources), ...)``: it decides order
    and rank split, this maps each input index ``s`` of epoch ``e`` to row
    ``(e % copies) * num_sources + s``. ``set_epoch`` is forwarded to ``base``; each pass
    advances the epoch (and tells ``base``) like :class:`ShardSampler`.

    (``DistributedSampler(ds)`` over the dataset itself also works: it then samples the items
    of ``ds``, i.e. the sources of ``ds.epoch``'s copy; call ``ds.set_epoch(e)`` with it.)
    """

    def __init__(self, base: Sampler[int], data_source: ShardDataset | ShardReader) -> None:
        self.base = base
        self.reader = _reader(data_source)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass read epoch ``epoch`` (forwarded to ``base``)."""
        self.epoch = _epoch(epoch)

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
            yield OutputRow(row_of(copy, s, n))

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]
