"""TensorFlow adapter: :func:`dataset` builds a ``tf.data.Dataset`` of ready batches.

Importing this module imports ``tensorflow``; ``ipmix_cli.readers`` itself does not.

Why this shape: the pipeline is ``range(steps) -> map(tf.numpy_function(read one batch))``
with static dtypes and shapes declared up front. Each step reads a whole batch with one grouped
read per shard (:class:`~ipmix_cli.readers.ShardReader`), so there is no per-image Python call,
no ``from_generator`` single-thread bottleneck, and ``num_parallel_calls`` runs several batch
reads at once (the reader is thread safe and releases the GIL during file reads). The epoch /
copy plan is computed from the step number, so an endless dataset for ``model.fit`` still
serves copy ``e % copies`` in epoch ``e``, reshuffled every epoch.

Elements are ``(images, labels, *extras)``; ``images`` is a (B, H, W, 3) ``uint8`` tensor by
default, or ``(clean, images, images2)`` for a ``--jsd`` output. For Keras ``fit`` keep
``extras`` empty (a third element would be read as sample weights).

Limits: ``tf.numpy_function`` runs Python in this process, so such a dataset cannot be
serialised into a SavedModel or shipped to tf.data service workers; use it for input, as here.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import tensorflow as tf

from ipmix_cli.readers.numpy_reader import ShardReader
from ipmix_cli.readers.plan import EpochPlan, batch_slices, start_batch_of

__all__ = ["dataset", "element_spec"]


def _reader(source: str | os.PathLike[str] | ShardReader, options: dict[str, Any]) -> ShardReader:
    if isinstance(source, ShardReader):
        if options:
            raise TypeError("pass reader options to ShardReader, not with a reader")
        return source
    return ShardReader(source, **options)


def _pack(reader: ShardReader, flat: list[Any]) -> tuple[Any, ...]:
    nv = len(reader.views)
    images = flat[0] if nv == 1 else tuple(flat[:nv])
    return (images, flat[nv], *flat[nv + 1 :])


def element_spec(reader: ShardReader, batch_size: int | None = None) -> tuple[Any, ...]:
    """``tf.TensorSpec`` structure of a batch from ``reader`` (``batch_size=None``: unknown
    batch dimension), e.g. for ``output_signature`` or a Keras ``Input``."""
    flat = [
        tf.TensorSpec((batch_size, *shape), tf.as_dtype(dtype), name=name)
        for name, shape, dtype in reader.fields()
    ]
    return _pack(reader, flat)


def dataset(
    source: str | os.PathLike[str] | ShardReader,
    batch_size: int,
    *,
    epoch: int = 0,
    epochs: int | None = 1,
    start_batch: int = 0,
    drop_last: bool = False,
    num_parallel_calls: int | None = None,
    deterministic: bool = True,
    prefetch: int | None = None,
    **options: Any,
) -> tf.data.Dataset:
    """Batches of ``epochs`` epochs starting at ``epoch`` (``epochs=None``: endless, for
    ``model.fit(..., steps_per_epoch=...)``).

    ``start_batch`` resumes in the middle of epoch ``epoch``: the dataset begins with that
    epoch's batch ``start_batch`` (the number of batches a preempted run had consumed), and
    every batch is the one an uninterrupted run would have produced at that step.

    ``source`` is the entry file (or ``s3://`` entry object) or a :class:`ShardReader`.
    ``options`` are the epoch plan's (``shuffle``, ``seed``, ``rank``, ``world_size``, ``even``,
    ``epoch_mode``; see :class:`~ipmix_cli.readers.plan.EpochPlan`) and, with a path, the
    reader's (``views``, ``extras``, ``dtype``, ``normalize``, ``channels_first``,
    ``cache_dir``, ``cache_limit``, ...). With ``drop_last`` every
    batch has exactly ``batch_size`` rows and the batch dimension is static.
    ``num_parallel_calls`` and ``prefetch`` default to ``tf.data.AUTOTUNE``; ``deterministic``
    keeps batch order (set ``False`` to trade order for throughput).
    """
    plan_options, reader_options = EpochPlan.split_options(options)
    reader = _reader(source, reader_options)
    plan = reader.plan(**plan_options)
    autotune = tf.data.AUTOTUNE
    slices = batch_slices(plan.rows_per_epoch(), batch_size, drop_last)
    if not slices:
        raise ValueError(
            f"{reader.path}: no batches ({plan.rows_per_epoch()} rows per epoch, drop_last)"
        )
    steps_per_epoch = len(slices)
    start_batch = start_batch_of(start_batch, steps_per_epoch)
    fields = reader.fields()

    def read(step: np.int64) -> list[np.ndarray]:
        e, b = divmod(int(step), steps_per_epoch)
        reader.prefetch_epoch(plan, epoch + e)  # once an epoch, for an output in a bucket
        arrays = reader.read(plan.rows(epoch + e)[slices[b]])
        return [arrays[name] for name, _, _ in fields]

    static_batch = batch_size if drop_last else None

    def load(step: tf.Tensor) -> tuple[Any, ...]:
        flat = tf.numpy_function(
            read, [step], [tf.as_dtype(dtype) for _, _, dtype in fields], stateful=False
        )
        for tensor, (_, shape, _) in zip(flat, fields, strict=True):
            tensor.set_shape((static_batch, *shape))
        return _pack(reader, list(flat))

    steps = (
        tf.data.Dataset.counter(start=start_batch)
        if epochs is None
        else tf.data.Dataset.range(start_batch, int(epochs) * steps_per_epoch)
    )
    ds = steps.map(
        load,
        num_parallel_calls=autotune if num_parallel_calls is None else num_parallel_calls,
        deterministic=deterministic,
    )
    return ds.prefetch(autotune if prefetch is None else prefetch)
