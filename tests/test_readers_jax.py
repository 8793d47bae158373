"""JAX adapter: numpy batches for ``jax.device_put`` (the epoch plan, this process's share,
prefetching), device placement, and the grain source / dataset. Each part is skipped when its
library is not installed."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from reader_outputs import COPIES, N_SOURCES, build_output, plain_arrays

from ipmix_cli.readers import ShardReader
from ipmix_cli.readers.jax import GrainSource, batches, grain_dataset


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("jax-readers")
    return {
        "standard": build_output(root, "standard", seed=3),
        "jsd": build_output(root, "jsd", jsd=True, seed=3),
    }


def test_numpy_batches_follow_the_plan(outputs) -> None:
    ref = plain_arrays(outputs["standard"])
    got = list(batches(outputs["standard"], 6, 4, seed=2, rank=0, world_size=1, extras=("row",)))
    assert [len(b[1]) for b in got] == [6, 6, 6]  # drop_last by default: one shape for jit
    rows = np.concatenate([b[2] for b in got])
    np.testing.assert_array_equal(rows, ShardReader(outputs["standard"]).epoch_rows(4, seed=2)[:18])
    assert rows.min() >= N_SOURCES and rows.max() < 2 * N_SOURCES  # epoch 4 -> copy 1
    for images, labels, row in got:
        assert isinstance(images, np.ndarray) and images.dtype == np.uint8
        np.testing.assert_array_equal(images, ref["images"][row])
        np.testing.assert_array_equal(labels, ref["labels"][row])


def test_hosts_get_equal_disjoint_shares(outputs) -> None:
    shares = [
        np.concatenate(
            [
                b[2]
                for b in batches(outputs["standard"], 1, 0, rank=r, world_size=3, extras=("row",))
            ]
        )
        for r in range(3)
    ]
    assert {len(s) for s in shares} == {7}  # 20 rows padded to 21: equal steps on every host
    assert set(np.concatenate(shares)) == set(range(N_SOURCES))
    exact = [
        np.concatenate(
            [
                b[2]
                for b in batches(
                    outputs["standard"], 1, 0, rank=r, world_size=3, even=None, extras=("row",)
                )
            ]
        )
        for r in range(3)
    ]
    assert sorted(np.concatenate(exact)) == list(range(N_SOURCES))


def test_device_put_and_sharding(outputs) -> None:
    jax = pytest.importorskip("jax")
    ref = plain_arrays(outputs["jsd"])
    got = list(batches(outputs["jsd"], 5, 0, shuffle=False, device_put=True))
    (clean, aug1, aug2), labels = got[0]
    assert isinstance(aug1, jax.Array) and aug1.shape == (5, 32, 32, 3)
    np.testing.assert_array_equal(np.asarray(clean), ref["clean"][:5])
    np.testing.assert_array_equal(np.asarray(aug2), ref["images2"][:5])
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    images, labels = next(
        iter(batches(outputs["standard"], 4, 0, shuffle=False, device_put=sharding))
    )
    assert isinstance(images, jax.Array) and images.sharding == sharding
    np.testing.assert_array_equal(
        np.asarray(labels), plain_arrays(outputs["standard"])["labels"][:4]
    )


def test_grain_source_and_dataset(outputs) -> None:
    grain = pytest.importorskip("grain")
    ref = plain_arrays(outputs["jsd"])
    source = GrainSource(outputs["jsd"], extras=("row",))
    assert len(source) == N_SOURCES * COPIES
    record = source[17]
    np.testing.assert_array_equal(record["images2"], ref["images2"][17])
    source = pickle.loads(pickle.dumps(source))
    ds = grain.MapDataset.source(source).shuffle(seed=0).batch(8)
    for batch in ds:
        for name in ("clean", "images", "images2", "labels"):
            np.testing.assert_array_equal(batch[name], ref[name][batch["row"]])
    plan = grain_dataset(outputs["standard"], 4, epochs=3, seed=1, extras=("row",))
    assert len(plan) == 3 * 5
    plan = pickle.loads(pickle.dumps(plan))
    it = plan.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=2))
    rows = np.concatenate([b[2] for b in it])
    reader = ShardReader(outputs["standard"])
    np.testing.assert_array_equal(
        rows, np.concatenate([reader.epoch_rows(e, seed=1) for e in range(3)])
    )
