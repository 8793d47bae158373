"""TensorFlow adapter with real TensorFlow on the CPU: the same bytes as h5py, static shapes and
dtypes, the epoch -> copy plan in endless datasets, ranks, JSD, and the Keras recipe in
docs/loading.md. Skipped when TensorFlow is not installed."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import numpy as np
import pytest
from reader_outputs import COPIES, DOCS, N_SOURCES, build_output, plain_arrays

from ipmix_cli.readers import ShardReader

if importlib.util.find_spec("tensorflow") is None:
    pytest.skip("tensorflow is not installed", allow_module_level=True)

# TensorFlow is imported by the fixtures below, when the first of these tests runs, not when
# pytest collects this file: its threads would otherwise be live in every test that forks.


@pytest.fixture(scope="module")
def tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def ipmix_tf(tf):
    from ipmix_cli.readers import tf as module

    return module


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tf-readers")
    return {
        "standard": build_output(root, "standard", seed=3),
        "jsd": build_output(root, "jsd", jsd=True, seed=3),
    }


def test_batches_match_h5py_with_declared_shapes(outputs, tf, ipmix_tf) -> None:
    ds = ipmix_tf.dataset(outputs["standard"], 6, epochs=2, seed=1, extras=("row", "copy_index"))
    images, labels, row, copy = ds.element_spec
    assert images.dtype == tf.uint8 and images.shape.as_list() == [None, 32, 32, 3]
    assert labels.dtype == tf.int64 and row.shape.as_list() == [None]
    assert int(ds.cardinality()) == 2 * 4  # 20 rows -> 4 batches (6, 6, 6, 2) per epoch
    ref = plain_arrays(outputs["standard"])
    rows, copies = [], []
    for x, y, r, c in ds.as_numpy_iterator():
        np.testing.assert_array_equal(x, ref["images"][r])
        np.testing.assert_array_equal(y, ref["labels"][r])
        rows.append(r)
        copies.append(c)
    rows = np.concatenate(rows)
    assert sorted(rows[:N_SOURCES]) == list(range(N_SOURCES))  # epoch 0: copy 0
    assert sorted(rows[N_SOURCES:]) == list(range(N_SOURCES, 2 * N_SOURCES))  # epoch 1: copy 1
    reader = ShardReader(outputs["standard"])
    expected = np.concatenate([reader.epoch_rows(e, seed=1) for e in (0, 1)])
    np.testing.assert_array_equal(rows, expected)  # deterministic order, same plan as numpy


def test_jsd_structure_and_static_batch(outputs, ipmix_tf) -> None:
    ds = ipmix_tf.dataset(outputs["jsd"], 4, epochs=1, drop_last=True, extras=("row",))
    (clean, aug1, aug2), labels, row = ds.element_spec
    assert clean.shape.as_list() == [4, 32, 32, 3] and labels.shape.as_list() == [4]
    ref = plain_arrays(outputs["jsd"])
    count = 0
    for (c, a1, a2), _, r in ds.as_numpy_iterator():
        np.testing.assert_array_equal(c, ref["clean"][r])
        np.testing.assert_array_equal(a1, ref["images"][r])
        np.testing.assert_array_equal(a2, ref["images2"][r])
        count += len(r)
    assert count == N_SOURCES


def test_endless_dataset_cycles_copies_and_converts(outputs, ipmix_tf) -> None:
    reader = ShardReader(
        outputs["standard"], dtype="float32", channels_first=True, extras=("copy_index",)
    )
    ds = ipmix_tf.dataset(reader, 5, epochs=None, drop_last=True, epoch=2)
    assert ds.element_spec[0].shape.as_list() == [5, 3, 32, 32]
    steps = reader.num_sources // 5
    seen = [c for _, _, c in ds.take(4 * steps).as_numpy_iterator()]
    for e in range(4):
        copies = np.concatenate(seen[e * steps : (e + 1) * steps])
        assert (copies == (2 + e) % COPIES).all()
    x = next(iter(ds))[0].numpy()
    assert x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1


def test_ranks_are_disjoint_and_covering(outputs, ipmix_tf) -> None:
    parts = []
    for rank in range(3):
        ds = ipmix_tf.dataset(
            outputs["standard"], 4, epochs=1, rank=rank, world_size=3, extras=("row",)
        )
        parts.append(np.concatenate([r for _, _, r in ds.as_numpy_iterator()]))
    assert sorted(np.concatenate(parts)) == list(range(N_SOURCES))
    spec = ipmix_tf.element_spec(ShardReader(outputs["jsd"]), 8)
    assert spec[0][2].shape.as_list() == [8, 32, 32, 3]


def test_docs_keras_recipe_runs(outputs, ipmix_tf) -> None:
    text = DOCS.read_text()
    match = re.search(r"<!-- recipe: tf-keras -->\s*```python\n(.*?)```", text, re.S)
    assert match, "tf-keras recipe missing from docs/loading.md"
    code = match.group(1).replace('"train.h5"', repr(str(outputs["standard"])))
    code = code.replace("epochs=100", "epochs=2, verbose=0").replace("batch = 128", "batch = 8")
    namespace: dict = {}
    exec(compile(code, str(DOCS), "exec"), namespace)  # noqa: S102 - our own docs
    history = namespace["model"].history.history
    assert len(history["loss"]) == 2 and np.isfinite(history["loss"]).all()
