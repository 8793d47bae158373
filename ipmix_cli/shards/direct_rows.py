"""Raw image rows written straight from their arrays into the places HDF5 gave their chunks.

Why: building a whole shard in HDF5's in-memory file (:mod:`ipmix_cli.shards.memfile`) copied
every row twice before the write, into the driver's memory and out again as the file image:
about 30 ms of a 15 MB CIFAR shard, 0.3 s of a 50,000-image run, more than the write itself.
Here HDF5 lays the file out with every chunk allocated when the dataset is made and never
written (allocation "early", fill "never"), so its image holds only the metadata; the file is
then written as that image with each chunk's bytes taken from the array's own memory. Readers
see an ordinary chunked, unfiltered dataset; the bytes of a partial last chunk beyond the rows
are zeros, as HDF5 itself pads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import h5py
import numpy as np

from ipmix_cli.fs.atomic import Buffer


@dataclass(frozen=True)
class ChunkPlaces:
    """Where the chunks of one image dataset lie in its file: ``offsets[i]`` is the byte offset
    of the chunk holding rows ``i * rows_per_chunk`` on."""

    rows_per_chunk: int
    row_bytes: int
    offsets: tuple[int, ...]


def create_unwritten(
    f: h5py.File, name: str, shape: tuple[int, ...], chunks: tuple[int, ...]
) -> h5py.Dataset:
    """A uint8 chunked dataset whose chunks are all allocated now and never written by HDF5."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return f.create_dataset(
        name, shape=shape, dtype=np.uint8, chunks=chunks, dcpl=dcpl, fill_time="never"
    )


def chunk_places(dset: h5py.Dataset) -> ChunkPlaces:
    """The chunk offsets of a dataset made by :func:`create_unwritten` (the file still open)."""
    k = int(dset.chunks[0])
    row = int(np.prod(dset.shape[1:], dtype=np.int64))
    n_chunks = -(-int(dset.shape[0]) // k)
    offsets = [-1] * n_chunks
    found: list[h5py.h5d.StoreInfo] = []
    dset.id.chunk_iter(found.append)
    for info in found:
        index = int(info.chunk_offset[0]) // k
        if info.size != k * row or offsets[index] != -1:
            raise RuntimeError(f"{dset.name}: chunk {index} is not one unfiltered whole chunk")
        offsets[index] = int(info.byte_offset)
    if -1 in offsets:
        raise RuntimeError(f"{dset.name}: HDF5 did not allocate every chunk")
    return ChunkPlaces(k, row, tuple(offsets))


def file_pieces(
    written: Sequence[tuple[int, Buffer]],
    size: int,
    datasets: Sequence[tuple[ChunkPlaces, np.ndarray]],
) -> list[Buffer]:
    """The ``size`` bytes of the file as pieces to write in order: the extents HDF5 wrote
    (``(offset, bytes)``: its metadata), each array's rows at its chunks' places (back-to-back
    chunks joined into one piece of the array's memory), and zeros for anything else."""
    views = [memoryview(np.ascontiguousarray(rows)).cast("B") for _, rows in datasets]
    sources: list[memoryview] = [memoryview(data).cast("B") for _, data in written]
    # (file offset, source, start, end): source < len(views) an array, else a written extent
    segments = [(at, len(views) + i, 0, len(sources[i])) for i, (at, _) in enumerate(written)]
    for which, (places, _) in enumerate(datasets):
        k, row = places.rows_per_chunk, places.row_bytes
        for i, offset in enumerate(places.offsets):  # each chunk padded to k rows
            segments.append((offset, which, i * k * row, (i + 1) * k * row))
    segments.sort()
    runs: list[list[int]] = []  # [source, start, end], back-to-back rows joined
    at = 0
    for offset, source, start, end in segments:
        if offset < at or offset + end - start > size:
            raise RuntimeError("shard chunks overlap the metadata or lie outside the file")
        if offset > at:
            runs.append([-1, 0, offset - at])  # space nothing was written to: zeros
        if runs and runs[-1][0] == source < len(views) and runs[-1][2] == start:
            runs[-1][2] = end
        else:
            runs.append([source, start, end])
        at = offset + end - start
    if at < size:
        runs.append([-1, 0, size - at])
    pieces: list[Buffer] = []
    for source, start, end in runs:
        if source < 0:
            pieces.append(bytes(end - start))
            continue
        view = (views + sources)[source]
        pieces.append(view[start : min(end, len(view))])
        if end > len(view):  # a partial last chunk: HDF5 pads it with zeros
            pieces.append(bytes(end - len(view)))
    return pieces
