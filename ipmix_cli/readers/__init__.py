"""DATA BACK: readers for ``ipmix augment`` outputs, numpy here, one adapter per framework.

* :class:`ShardReader` (numpy, ``numpy_reader``): random access, batched reads, JSD triplets,
  float conversion. Every adapter is a thin layer over it.
* :class:`EpochPlan` (``plan``): which rows each rank reads in each epoch (copy selection,
  seeded shuffle, rank splits, batches), the same for every adapter.
* ``shard_io``: reading rows out of one shard file (memory map or h5py); ``readahead``: reading
  ahead in a thread.
* ``ipmix_cli.readers.torch``: ``ShardDataset`` (map-style ``Dataset``), ``ShardSampler`` and
  ``CopySampler`` (``set_epoch``, ranks, ``DistributedSampler``).
* ``ipmix_cli.readers.tf``: ``dataset()`` returning a ``tf.data.Dataset`` of batches.
* ``ipmix_cli.readers.jax``: ``batches()`` of numpy arrays for ``jax.device_put``, and a grain
  data source.

Importing this package imports none of PyTorch, TensorFlow or JAX: each framework is imported
by its own submodule only, so a numpy-only user never pays for (or needs) them. A new
framework gets a submodule of its own built on ``ShardReader`` and ``EpochPlan``. Recipes:
``docs/loading.md``.
"""

from __future__ import annotations

from ipmix_cli.readers.numpy_reader import EXTRAS, ShardReader
from ipmix_cli.readers.plan import EpochPlan, batch_slices, epoch_rows
from ipmix_cli.readers.readahead import prefetch

__all__ = ["EXTRAS", "EpochPlan", "ShardReader", "batch_slices", "epoch_rows", "prefetch"]
