"""Readers for ``ipmix augment`` outputs: numpy here, adapters per framework in submodules.

* :class:`ShardReader` (numpy): random access, batched reads, epoch -> copy selection, seeded
  shuffling, rank splitting, JSD triplets. Every adapter is a thin layer over it.
* ``ipmix_cli.readers.torch``: ``ShardDataset`` (map-style ``Dataset``), ``ShardSampler`` and
  ``CopySampler`` (``set_epoch``, ranks, ``DistributedSampler``).
* ``ipmix_cli.readers.tf``: ``dataset()`` returning a ``tf.data.Dataset`` of batches.
* ``ipmix_cli.readers.jax``: ``batches()`` of numpy arrays for ``jax.device_put``, and a grain
  data source.

Importing this package imports none of PyTorch, TensorFlow or JAX: each framework is imported
by its own submodule only, so a numpy-only user never pays for (or needs) them. Recipes:
``docs/loading.md``.
"""

from __future__ import annotations

from ipmix_cli.readers.numpy_reader import (
    EXTRAS,
    ShardReader,
    batch_slices,
    epoch_rows,
    prefetch,
)

__all__ = ["EXTRAS", "ShardReader", "batch_slices", "epoch_rows", "prefetch"]
