"""Raw shards written straight from the arrays (``shards/direct_rows.py``, ``SparseImage``).

Oracles: h5py reading the file back, HDF5's own chunk records (``read_direct_chunk``), the
in-memory writer the compressed path still uses, and a real file for the sparse image.
"""

from __future__ import annotations

import io

import h5py
import numpy as np
import pytest

from ipmix_cli.shards.checksum import shard_checksum
from ipmix_cli.shards.memfile import SparseImage
from ipmix_cli.shards.write import write_shard

ROW = 32 * 32 * 3


def _arrays(n: int, seed: int, jsd: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    names = ("images", "clean", "images2") if jsd else ("images",)
    out = {name: rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8) for name in names}
    out["labels"] = rng.integers(0, 10, n)
    out["source_index"] = rng.permutation(n)
    out["copy_index"] = np.zeros(n, np.int64)
    return out


@pytest.mark.parametrize("n", [1, 169, 170, 171, 341, 2000])
@pytest.mark.parametrize("jsd", [False, True])
def test_rows_read_back_exactly(tmp_path, n, jsd):
    arrays = _arrays(n, n, jsd)
    path = tmp_path / "shard-00003.h5"
    info = write_shard(path, arrays, attrs={"job": {"seed": 1}})
    with h5py.File(path, "r") as f:
        for name, want in arrays.items():
            np.testing.assert_array_equal(f[name][()], want)
        assert f["images"].chunks == (min(n, 170), 32, 32, 3)
        assert f["images"].compression is None
    assert shard_checksum(path) == info.checksum  # read back from the file, every dataset


@pytest.mark.parametrize("n", [1, 171, 509])
def test_partial_last_chunk_is_padded_with_zeros(tmp_path, n):
    path = tmp_path / "shard-00000.h5"
    arrays = _arrays(n, 7)
    write_shard(path, arrays)
    with h5py.File(path, "r") as f:
        dset = f["images"]
        k = dset.chunks[0]
        last = (n - 1) // k
        mask, raw = dset.id.read_direct_chunk((last * k, 0, 0, 0))
        assert mask == 0 and len(raw) == k * ROW
        rows = n - last * k
        assert raw[: rows * ROW] == arrays["images"][last * k :].tobytes()
        assert raw[rows * ROW :] == bytes((k - rows) * ROW)
        # every chunk lies inside the file: nothing was cut off its end
        offsets = [dset.id.get_chunk_info(i).byte_offset for i in range(dset.id.get_num_chunks())]
    assert max(offsets) + k * ROW <= path.stat().st_size


def test_same_contents_as_the_in_memory_writer(tmp_path):
    """gzip shards still go through HDF5's own writer: both files hold the same rows,
    attributes and checksum."""
    arrays = _arrays(600, 3, jsd=True)
    direct = write_shard(tmp_path / "a" / "shard-00001.h5", arrays, attrs={"x": [1, 2]})
    packed = write_shard(
        tmp_path / "b" / "shard-00001.h5", arrays, attrs={"x": [1, 2]}, compression="gzip"
    )
    assert direct.checksum == packed.checksum
    with (
        h5py.File(tmp_path / "a" / "shard-00001.h5") as a,
        h5py.File(tmp_path / "b" / "shard-00001.h5") as b,
    ):
        assert sorted(a) == sorted(b)
        assert sorted(a.attrs) == sorted(b.attrs)
        for key in a.attrs:
            np.testing.assert_array_equal(a.attrs[key], b.attrs[key])
        for name in a:
            np.testing.assert_array_equal(a[name][()], b[name][()])


def test_sparse_image_matches_a_real_file(tmp_path):
    """Random overlapping writes, reads and truncations (growing ones too), against a file."""
    rng = np.random.default_rng(0)
    sparse, dense = SparseImage(), open(tmp_path / "oracle", "w+b")  # noqa: SIM115
    for step in range(600):
        action = rng.integers(0, 10)
        offset = int(rng.integers(0, 5000))
        if action < 7:
            data = rng.integers(0, 256, int(rng.integers(1, 300)), dtype=np.uint8).tobytes()
            for f in (sparse, dense):
                f.seek(offset)
                assert f.write(data) == len(data)
        elif action < 9:
            size = int(rng.integers(0, 400))
            got = bytearray(b"\xff" * size)  # a reused buffer: gaps must read as zeros
            sparse.seek(offset)
            dense.seek(offset)
            n = sparse.readinto(memoryview(got))
            want = dense.read(size)
            assert bytes(got[:n]) == want, step
        else:
            for f in (sparse, dense):
                f.truncate(offset)
        assert sparse.seek(0, io.SEEK_END) == dense.seek(0, io.SEEK_END)
    whole = bytearray(sparse.size)
    for start, data in sparse.extents:
        whole[start : start + len(data)] = data
    dense.seek(0)
    assert bytes(whole) == dense.read()
    dense.close()
    starts = [a for a, _ in sparse.extents]
    ends = [a + len(b) for a, b in sparse.extents]
    assert all(e < s for e, s in zip(ends, starts[1:], strict=False))  # disjoint, apart
