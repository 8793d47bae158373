"""The numpy reader (``ipmix_cli.readers.ShardReader``) on real ``ipmix augment`` outputs: same
bytes as plain h5py, epoch -> copy selection, seeded shuffles, rank splits, JSD triplets,
lazy per-process files, and refusal of damaged outputs."""

from __future__ import annotations

import multiprocessing
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest
from reader_outputs import COPIES, N_SOURCES, SHARD_SIZE, build_output, plain_arrays

from ipmix_cli.errors import ShardError
from ipmix_cli.readers import ShardReader, batch_slices, epoch_rows, prefetch
from ipmix_cli.shards import shard_path, write_entry, write_shard


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("readers")
    return {
        "standard": build_output(root, "standard"),
        "jsd": build_output(root, "jsd", jsd=True),
        "lzf": build_output(root, "lzf", compression="lzf"),
        "gzip": build_output(root, "gzip", jsd=True, compression="gzip"),
    }


@pytest.fixture()
def damaged(tmp_path: Path) -> Path:
    return build_output(tmp_path, "damaged")


# -- same bytes as h5py ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["standard", "jsd", "lzf", "gzip"])
@pytest.mark.parametrize("direct", [True, False])
def test_random_batches_match_plain_h5py(outputs, kind: str, direct: bool) -> None:
    entry = outputs[kind]
    reader = ShardReader(entry, extras=("source_index", "copy_index", "row"), direct=direct)
    ref = plain_arrays(entry)
    assert len(reader) == N_SOURCES * COPIES == len(ref["labels"])
    rng = np.random.default_rng(1)
    cases = [rng.integers(0, len(reader), int(rng.integers(1, 45))) for _ in range(25)]
    cases += [np.arange(len(reader)), np.arange(5, 40), np.array([59, 0, 59, 7, 6]), []]
    for rows in cases:
        rows = np.asarray(rows, dtype=np.int64)
        got = reader.read(rows)
        for name in (*reader.views, "labels", "source_index", "copy_index"):
            assert got[name].dtype == ref[name].dtype
            np.testing.assert_array_equal(got[name], ref[name][rows], err_msg=name)
        np.testing.assert_array_equal(got["row"], rows)


def test_direct_reads_are_used_for_uncompressed_shards(outputs) -> None:
    for kind, direct in (("standard", True), ("lzf", False)):
        reader = ShardReader(outputs[kind])
        reader.read([0])
        shard = reader._open[0]
        assert (shard.mapped is not None) is direct and (shard.h5 is not None) is not direct


def test_one_open_file_at_a_time(outputs) -> None:
    reader = ShardReader(outputs["jsd"], max_open_files=1, extras=("row",))
    ref = plain_arrays(outputs["jsd"])
    rng = np.random.default_rng(3)
    for rows in [np.arange(len(reader)), *(rng.integers(0, len(reader), 30) for _ in range(5))]:
        got = reader.read(rows)
        for name in reader.views:
            np.testing.assert_array_equal(got[name], ref[name][rows])
    assert len(reader._open) == 1


def test_single_rows_slices_and_negative_indices(outputs) -> None:
    reader = ShardReader(outputs["standard"])
    ref = plain_arrays(outputs["standard"])
    image, label = reader[13]
    assert image.shape == (32, 32, 3) and label.shape == ()
    np.testing.assert_array_equal(image, ref["images"][13])
    assert int(label) == ref["labels"][13]
    images, labels = reader[-3:]
    np.testing.assert_array_equal(images, ref["images"][-3:])
    np.testing.assert_array_equal(reader.read([-1])["images"][0], ref["images"][-1])
    np.testing.assert_array_equal(reader.labels, ref["labels"])
    with pytest.raises(IndexError):
        reader.read([len(reader)])
    with pytest.raises(TypeError):
        reader.read([[1, 2]])


# -- epochs, shuffles, ranks -----------------------------------------------------------------


def test_epoch_reads_copy_epoch_mod_copies(outputs) -> None:
    reader = ShardReader(outputs["standard"], extras=("source_index", "copy_index"))
    assert (reader.copies, reader.num_sources) == (COPIES, N_SOURCES)
    for epoch in range(7):
        rows = reader.epoch_rows(epoch, seed=4)
        batch = reader.read(rows)
        assert (batch["copy_index"] == epoch % COPIES).all()
        assert sorted(batch["source_index"]) == list(range(N_SOURCES))
    # the three copies of one source really are different augmentations
    first = [reader.read(reader.epoch_rows(e, shuffle=False))["images"][0] for e in range(3)]
    assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[1], first[2])


def test_epoch_mode_all_reads_every_row() -> None:
    rows = epoch_rows(N_SOURCES, COPIES, 5, epoch_mode="all", seed=1)
    assert sorted(rows) == list(range(N_SOURCES * COPIES))


def test_shuffle_is_seeded_and_covers_each_row_once() -> None:
    a = epoch_rows(1000, 4, 2, seed=7)
    np.testing.assert_array_equal(a, epoch_rows(1000, 4, 2, seed=7))  # deterministic
    assert sorted(a) == list(range(2000, 3000))  # each row of copy 2 exactly once
    assert not np.array_equal(a, epoch_rows(1000, 4, 2, seed=8))  # seed matters
    assert not np.array_equal(a - 2000, epoch_rows(1000, 4, 6, seed=7) - 2000)  # new order
    np.testing.assert_array_equal(epoch_rows(10, 2, 1, shuffle=False), np.arange(10, 20))
    # same plan in another process (no hidden global random state)
    code = (
        "from ipmix_cli.readers import epoch_rows; "
        "print(','.join(map(str, epoch_rows(1000, 4, 2, seed=7)[:20])))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ",".join(map(str, a[:20]))


@pytest.mark.parametrize("n, world", [(20, 1), (20, 3), (20, 4), (1000, 7), (5, 8)])
def test_rank_splitting_is_disjoint_and_covering(n: int, world: int) -> None:
    parts = [epoch_rows(n, 2, 3, seed=1, rank=r, world_size=world) for r in range(world)]
    joined = np.concatenate(parts)
    assert len(joined) == n and sorted(joined) == list(range(n, 2 * n))  # disjoint + covering
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    full = epoch_rows(n, 2, 3, seed=1)
    np.testing.assert_array_equal(joined, full)  # ranks share one plan
    padded = [
        epoch_rows(n, 2, 3, seed=1, rank=r, world_size=world, even="pad") for r in range(world)
    ]
    assert len({len(p) for p in padded}) == 1 and set(np.concatenate(padded)) == set(full)
    dropped = [
        epoch_rows(n, 2, 3, seed=1, rank=r, world_size=world, even="drop") for r in range(world)
    ]
    joined = np.concatenate(dropped)
    assert len({len(p) for p in dropped}) == 1 and len(set(joined)) == len(joined) > n - world


def test_bad_plan_options() -> None:
    for kwargs in ({"rank": 2, "world_size": 2}, {"even": "odd"}, {"epoch_mode": "x"}):
        with pytest.raises(ValueError):
            epoch_rows(10, 1, 0, **kwargs)
    with pytest.raises(ValueError):
        batch_slices(10, 0)
    assert [s.stop - s.start for s in batch_slices(10, 4)] == [4, 4, 2]
    assert [s.stop - s.start for s in batch_slices(10, 4, drop_last=True)] == [4, 4]


def test_batches_follow_the_plan(outputs) -> None:
    reader = ShardReader(outputs["standard"], extras=("row",))
    kwargs = {"seed": 3, "rank": 1, "world_size": 2}
    plan = reader.epoch_rows(4, **kwargs)
    got = list(reader.batches(4, epoch=4, **kwargs))
    assert [len(b[1]) for b in got] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b[2] for b in got]), plan)
    assert len(list(reader.batches(4, epoch=4, drop_last=True, **kwargs))) == 2


# -- JSD, conversion -------------------------------------------------------------------------


def test_jsd_triplets(outputs) -> None:
    reader = ShardReader(outputs["jsd"])
    ref = plain_arrays(outputs["jsd"])
    assert reader.views == ("clean", "images", "images2")
    (clean, aug1, aug2), labels = reader.read_batch([3, 50, 21])
    for got, name in ((clean, "clean"), (aug1, "images"), (aug2, "images2")):
        np.testing.assert_array_equal(got, ref[name][[3, 50, 21]])
    assert not np.array_equal(aug1, aug2) and not np.array_equal(clean, aug1)
    # each copy of a source is a fresh augmentation (the clean view is re-cropped too)
    (_, aug1, _), _ = reader.read_batch([5, 5 + N_SOURCES, 5 + 2 * N_SOURCES])
    assert not np.array_equal(aug1[0], aug1[1]) and not np.array_equal(aug1[1], aug1[2])
    one = ShardReader(outputs["jsd"], views="images")
    images, _ = one.read_batch([3])
    np.testing.assert_array_equal(images, ref["images"][[3]])
    with pytest.raises(ValueError, match="clean"):
        ShardReader(outputs["standard"], views=("clean", "images"))
    with pytest.raises(ValueError, match="extras"):
        ShardReader(outputs["standard"], extras=("weights",))


def test_float_normalise_and_channels_first(outputs) -> None:
    raw = plain_arrays(outputs["standard"])["images"][:9]
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    expect = (raw.astype(np.float64) / 255 - mean) / std
    for channels_first in (False, True):
        reader = ShardReader(
            outputs["standard"], normalize=(mean, std), channels_first=channels_first
        )
        images, _ = reader.read_batch(range(9))
        want = expect.transpose(0, 3, 1, 2) if channels_first else expect
        assert images.dtype == np.float32 and images.flags.c_contiguous
        assert reader.item_shape == images.shape[1:]
        np.testing.assert_allclose(images, want, rtol=1e-5, atol=1e-5)
    images, _ = ShardReader(outputs["standard"], dtype="float16").read_batch(range(9))
    assert images.dtype == np.float16
    np.testing.assert_allclose(images, raw / 255, atol=1e-3)
    chw, _ = ShardReader(outputs["standard"], channels_first=True).read_batch(range(9))
    assert chw.dtype == np.uint8 and chw.shape == (9, 3, 32, 32)
    np.testing.assert_array_equal(chw, raw.transpose(0, 3, 1, 2))
    with pytest.raises(ValueError):
        ShardReader(outputs["standard"], dtype="int32")
    with pytest.raises(ValueError):
        ShardReader(outputs["standard"], normalize=((0, 0), (1, 1)))


# -- processes, threads, files ---------------------------------------------------------------


def test_pickled_reader_opens_files_lazily(outputs) -> None:
    reader = ShardReader(outputs["standard"])
    assert not reader._open  # nothing opened by the constructor
    reader.read([0, 30, 59])
    assert len(reader._open) == 3
    blob = pickle.dumps(reader)
    assert len(blob) < 20_000
    clone = pickle.loads(blob)
    assert not clone._open  # handles never travel
    np.testing.assert_array_equal(clone.read([30])["images"], reader.read([30])["images"])
    assert len(clone._open) == 1


def _child_read(reader: ShardReader, rows: list[int], queue) -> None:
    before = len(reader._open)
    batch = reader.read(rows)
    queue.put((before, reader._open is not None and len(reader._open), batch["images"]))


def test_forked_child_never_uses_inherited_handles(outputs) -> None:
    reader = ShardReader(outputs["standard"])
    reader.read([1, 20, 40])  # parent opens shards 0, 2 and 5
    parent_handles = dict(reader._open)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_read, args=(reader, [40, 1], queue))
    child.start()
    inherited, opened, images = queue.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0
    assert inherited == 3 and opened == 2  # the child opened its own two shards
    np.testing.assert_array_equal(images, plain_arrays(outputs["standard"])["images"][[40, 1]])
    assert reader._open == parent_handles  # the parent's handles are untouched
    np.testing.assert_array_equal(reader.read([1])["images"][0], images[1])


def test_threads_share_a_reader_with_few_open_files(outputs) -> None:
    reader = ShardReader(outputs["jsd"], max_open_files=2, extras=("row",))
    ref = plain_arrays(outputs["jsd"])
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(40):
                rows = rng.integers(0, len(reader), 12)
                got = reader.read(rows)
                for name in reader.views:
                    np.testing.assert_array_equal(got[name], ref[name][rows])
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert len(reader._open) <= 2


def test_importing_readers_imports_no_framework() -> None:
    code = (
        "import sys, ipmix_cli.readers; "
        "print(sorted(m for m in ('torch', 'tensorflow', 'jax', 'grain') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_prefetch_keeps_order_forwards_errors_and_stops() -> None:
    assert list(prefetch(iter(range(50)), 3)) == list(range(50))
    assert list(prefetch(iter(range(5)), 0)) == list(range(5))

    def failing():
        yield 1
        raise RuntimeError("boom")

    it = prefetch(failing(), 2)
    assert next(it) == 1
    with pytest.raises(RuntimeError, match="boom"):
        next(it)
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    it = prefetch(endless(), 2)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()  # stops the thread
    count = len(produced)
    threading.Event().wait(0.3)
    assert len(produced) == count <= 3 + 2 + 1


# -- damaged outputs -------------------------------------------------------------------------


def test_missing_shard_is_refused(damaged: Path) -> None:
    shard_path(damaged, 4).unlink()
    with pytest.raises(ShardError, match="shard-00004.h5"):
        ShardReader(damaged)


def test_wrong_count_shard_is_refused(damaged: Path) -> None:
    path = shard_path(damaged, 2)
    with h5py.File(path, "r") as f:
        arrays = {name: f[name][()][:-1] for name in f}
    write_shard(path, arrays, index=2)
    with pytest.raises(ShardError, match="shard-00002.h5"):
        ShardReader(damaged)


def test_shard_vanishing_after_opening_is_an_error_not_zeros(damaged: Path) -> None:
    reader = ShardReader(damaged)
    shard_path(damaged, 3).unlink()
    reader.read([0])  # other shards still read
    with pytest.raises(ShardError, match="shard-00003.h5"):
        reader.read([3 * SHARD_SIZE])


def test_shard_replaced_while_reading_is_an_error(damaged: Path) -> None:
    reader = ShardReader(damaged, max_open_files=1)
    reader.read([0])
    reader.read(np.arange(SHARD_SIZE, 2 * SHARD_SIZE))  # evicts shard 0; its layout stays cached
    path = shard_path(damaged, 0)
    with h5py.File(path, "r") as f:
        arrays = {name: f[name][()] for name in f}
    arrays["images"] = 255 - arrays["images"]
    write_shard(path, arrays, index=0, compression="gzip")  # same count, new file
    with pytest.raises(ShardError, match="changed on disk"):
        reader.read([1])


def test_output_without_copy_layout_reads_as_one_copy(tmp_path: Path) -> None:
    entry = tmp_path / "plain.h5"
    rng = np.random.default_rng(2)
    arrays = {
        "images": rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8),
        "labels": np.arange(6),
        "source_index": np.arange(6),
        "copy_index": np.zeros(6, np.int64),
    }
    write_entry(entry, [write_shard(shard_path(entry, 0), arrays)], {})
    reader = ShardReader(entry)
    assert (reader.copies, reader.num_sources) == (1, 6)
    np.testing.assert_array_equal(
        reader.read(reader.epoch_rows(3))["images"].sum(), arrays["images"].sum()
    )
