"""PyTorch adapter with real PyTorch on the CPU: DataLoader with two worker processes,
samplers (epoch -> copy, ranks, DistributedSampler), JSD batches, and the recipe in
docs/loading.md. Skipped when torch is not installed."""

from __future__ import annotations

import multiprocessing
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from reader_outputs import COPIES, DOCS, N_SOURCES, build_output, plain_arrays

torch = pytest.importorskip("torch")

from torch.utils.data import DataLoader, DistributedSampler  # noqa: E402

from ipmix_cli.readers.torch import (  # noqa: E402
    CopySampler,
    ShardBatchSampler,
    ShardDataset,
    ShardSampler,
)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("torch-readers")
    return {
        "standard": build_output(root, "standard", seed=3),
        "jsd": build_output(root, "jsd", jsd=True, seed=3),
    }


def _context() -> multiprocessing.context.BaseContext | None:
    """Fork (PyTorch's default on Linux) unless TensorFlow or JAX was loaded in this test
    session: their threads make fork unsafe (JAX warns of deadlocks). Then a fork server with
    torch preloaded: workers still start in a fraction of a second, and the dataset is
    pickled to them (as with spawn)."""
    if not any(m in sys.modules for m in ("tensorflow", "jax")):
        return None
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "ipmix_cli.readers.torch"])
    return ctx


def _check_batches(loader, ref: dict[str, np.ndarray], jsd: bool) -> np.ndarray:
    """Every batch equals plain h5py at its rows; returns the rows in order."""
    rows = []
    for batch in loader:
        images, labels, row = batch
        r = row.numpy()
        assert labels.dtype == torch.int64 and row.dtype == torch.int64
        np.testing.assert_array_equal(labels.numpy(), ref["labels"][r])
        views = images if jsd else (images,)
        names = ("clean", "images", "images2") if jsd else ("images",)
        assert len(views) == len(names)
        for view, name in zip(views, names, strict=True):
            assert view.dtype == torch.uint8 and view.shape[1:] == (32, 32, 3)
            np.testing.assert_array_equal(view.numpy(), ref[name][r])
        rows.append(r)
    return np.concatenate(rows)


@pytest.mark.parametrize("kind", ["standard", "jsd"])
def test_dataloader_two_workers_default_collate(outputs, kind: str) -> None:
    ds = ShardDataset(outputs[kind], extras=("row",))
    ds.reader.read([0])  # a handle open in the parent must not leak into the workers
    sampler = ShardSampler(ds, seed=5)
    loader = DataLoader(
        ds,
        batch_size=6,
        sampler=sampler,
        num_workers=2,
        persistent_workers=True,  # the epoch lives in the sampler, so this is fine
        multiprocessing_context=_context(),
    )
    ref = plain_arrays(outputs[kind])
    seen = []
    for epoch in range(COPIES + 1):  # no set_epoch: each pass advances the epoch by itself
        rows = _check_batches(loader, ref, kind == "jsd")
        assert sorted(rows) == list(
            range((epoch % COPIES) * N_SOURCES, (epoch % COPIES + 1) * N_SOURCES)
        )
        np.testing.assert_array_equal(rows, sampler.rows(epoch))
        seen.append(rows)
    assert not np.array_equal(seen[0], seen[COPIES]), "same copy, new order in a later epoch"


def test_fast_loader_two_workers_and_set_epoch(outputs) -> None:
    ds = ShardDataset(outputs["jsd"], extras=("row",))
    loader = ds.loader(8, seed=2, num_workers=2, multiprocessing_context=_context())
    assert isinstance(loader.sampler, ShardBatchSampler) and len(loader) == 3
    ref = plain_arrays(outputs["jsd"])
    loader.sampler.set_epoch(4)
    rows = _check_batches(loader, ref, jsd=True)
    assert sorted(rows) == list(range(N_SOURCES, 2 * N_SOURCES))  # epoch 4 -> copy 1
    np.testing.assert_array_equal(rows, ShardSampler(ds, seed=2).rows(4))
    assert loader.sampler.epoch == 5
    loader.sampler.set_epoch(4)  # replay
    np.testing.assert_array_equal(_check_batches(loader, ref, jsd=True), rows)


def test_single_items_and_batches_as_tensors(outputs) -> None:
    ds = ShardDataset(outputs["standard"], extras=("source_index",), epoch_mode="all")
    ref = plain_arrays(outputs["standard"])
    image, label, source = ds[25]
    assert image.shape == (32, 32, 3) and int(label) == ref["labels"][25] and int(source) == 5
    images, labels, _ = ds[torch.tensor([3, 1, 2])]
    np.testing.assert_array_equal(images.numpy(), ref["images"][[3, 1, 2]])
    assert len(ds) == N_SOURCES * COPIES and (ds.copies, ds.num_sources) == (COPIES, N_SOURCES)
    floats = ShardDataset(outputs["standard"], dtype="float32", channels_first=True)
    image, _ = floats[0]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 32) and image.max() <= 1
    with pytest.raises(TypeError):
        ShardDataset(ds.reader, views="images")


def test_ranks_disjoint_and_covering(outputs) -> None:
    ds = ShardDataset(outputs["standard"])
    for world in (2, 3):
        parts = [list(ShardSampler(ds, rank=r, world_size=world, even=None)) for r in range(world)]
        joined = sum(parts, [])
        assert sorted(joined) == list(range(N_SOURCES))
        padded = [ShardSampler(ds, rank=r, world_size=world) for r in range(world)]  # even=auto
        assert len({len(s) for s in padded}) == 1 and len({len(list(s)) for s in padded}) == 1
        dropped = [ShardSampler(ds, rank=r, world_size=world, drop_last=True) for r in range(world)]
        rows = sum((list(s) for s in dropped), [])
        assert len(rows) == len(set(rows)) == N_SOURCES - N_SOURCES % world


def test_distributed_sampler_over_the_dataset_and_with_copy_sampler(outputs) -> None:
    ds = ShardDataset(outputs["standard"], extras=("row",), epoch_mode="all")
    ref = plain_arrays(outputs["standard"])
    # plain DistributedSampler over every row (epoch_mode="all"): each epoch covers every copy
    rows = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=1)
        loader = DataLoader(
            ds, batch_size=7, sampler=sampler, num_workers=2, multiprocessing_context=_context()
        )
        rows.append(_check_batches(loader, ref, jsd=False))
    assert sorted(np.concatenate(rows)) == list(range(N_SOURCES * COPIES))
    # CopySampler adds the epoch -> copy selection on top of a DistributedSampler of sources
    for epoch in (0, 2, 4):
        parts = []
        for rank in range(2):
            base = DistributedSampler(range(N_SOURCES), num_replicas=2, rank=rank, seed=1)
            sampler = CopySampler(base, ds)
            sampler.set_epoch(epoch)
            parts.append(list(sampler))
            assert base.epoch == epoch and len(sampler) == N_SOURCES // 2
        copy = epoch % COPIES
        assert sorted(sum(parts, [])) == list(range(copy * N_SOURCES, (copy + 1) * N_SOURCES))


def _recipe(name: str) -> str:
    """The python block under ``<!-- recipe: name -->`` in docs/loading.md."""
    text = DOCS.read_text()
    match = re.search(rf"<!-- recipe: {name} -->\s*```python\n(.*?)```", text, re.S)
    assert match, f"recipe {name} not found in {DOCS}"
    return match.group(1)


def test_docs_jsd_training_loop_runs(outputs) -> None:
    code = _recipe("torch-jsd")
    code = code.replace('"train.h5"', repr(str(outputs["jsd"])))
    code = code.replace("num_workers=4", "num_workers=0").replace("range(100)", "range(2)")
    code = code.replace("persistent_workers=True", "persistent_workers=False")
    code = code.replace("pin_memory=True", "pin_memory=False")  # no accelerator here
    namespace: dict = {}
    torch.manual_seed(0)
    exec(compile(code, str(DOCS), "exec"), namespace)  # noqa: S102 - our own docs
    assert np.isfinite(namespace["loss"].item())
