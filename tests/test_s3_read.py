"""Reading outputs straight from a bucket: ``ShardReader("s3://...")`` and the adapters against a
real S3-compatible server on loopback (``moto_server``), no mocks. Shards are fetched whole into
a local cache, verified (size, checksum), evicted under a limit, prefetched, and read exactly as
the local output reads; every failure is one line naming the object."""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
from reader_outputs import build_output
from s3server import environment, s3, start_server  # noqa: F401 - the fixture

from ipmix_cli.augment.config import IPMixConfig
from ipmix_cli.errors import RemoteError, ShardError
from ipmix_cli.jobs.augment_job import run_augment
from ipmix_cli.jobs.augment_spec import AugmentSpec
from ipmix_cli.readers import ShardReader
from ipmix_cli.remote import store as store_module
from ipmix_cli.remote.store import ObjectStore
from ipmix_cli.remote.url import ObjectURL
from ipmix_cli.shards.manifest import read_manifest

BUCKET = "ipmix-read"


def upload(store: ObjectStore, entry: Path, prefix: str) -> str:
    """The entry file and its shards as the layout ``augment --out s3://`` writes; the URL."""
    for record in read_manifest(entry).shards:
        store.put_file(entry.parent / record.file, f"{prefix}/{record.file}")
    store.put_file(entry, f"{prefix}/{entry.name}")
    return f"s3://{store.bucket}/{prefix}/{entry.name}"


def jpeg_output(root: Path) -> Path:
    """A ``--codec jpeg`` output beside ``build_output``'s (its bank and input reused)."""
    out = root / "jpeg.h5"
    spec = AugmentSpec(
        input=root / "data.npz",
        mixing_set=root / "bank",
        out=out,
        config=IPMixConfig.preset("cifar"),
        copies=3,
        seed=4,
        shard_size=7,
        codec="jpeg",
    )
    run_augment(spec, jobs=1)
    return out


@pytest.fixture(scope="module")
def outputs(s3, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:  # noqa: F811
    """kind -> (local entry, s3:// URL of the same output)."""
    root = tmp_path_factory.mktemp("s3-read")
    s3.make_bucket(BUCKET)
    store = ObjectStore(BUCKET)
    local = {
        "standard": build_output(root, "standard", seed=3),
        "jsd": build_output(root, "jsd", jsd=True, seed=3),
    }
    local["jpeg"] = jpeg_output(root)
    return {kind: (path, upload(store, path, f"runs/{kind}")) for kind, path in local.items()}


def cache_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and ".locks" not in p.parts]


def cache_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in cache_files(folder) if p.exists())


def cached_shards(folder: Path) -> list[str]:
    """Names of the shards in the cache (``shard-00003``), sorted."""
    return sorted(p.name.split(".")[0] for p in cache_files(folder) if "shard-" in p.name)


def assert_same(a: tuple, b: tuple) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        if isinstance(x, tuple):
            assert_same(x, y)
        else:
            np.testing.assert_array_equal(x, y)


def one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text and "Traceback" not in text, text
    return text


# -- (a) every row, every kind of output ---------------------------------------------------------
@pytest.mark.parametrize("kind", ["standard", "jsd", "jpeg"])
def test_every_row_equals_the_local_readers(outputs, kind: str, tmp_path: Path) -> None:
    path, url = outputs[kind]
    local = ShardReader(path, extras=("source_index", "copy_index", "row"))
    remote = ShardReader(url, extras=("source_index", "copy_index", "row"), cache_dir=tmp_path)
    assert remote.remote and not local.remote
    assert str(remote.path) == url and remote.count == local.count
    rows = np.random.default_rng(1).permutation(local.count)
    assert_same(remote.read_batch(rows), local.read_batch(rows))
    assert_same(remote[5], local[5])
    np.testing.assert_array_equal(remote.labels, local.labels)
    for epoch in (0, 1):
        for a, b in zip(
            remote.batches(8, epoch, shuffle=True, seed=2),
            local.batches(8, epoch, shuffle=True, seed=2),
            strict=True,
        ):
            assert_same(a, b)
    copy = pickle.loads(pickle.dumps(remote))  # a worker's copy: its own threads, same cache
    assert_same(copy.read_batch(rows[:9]), local.read_batch(rows[:9]))
    assert len(cached_shards(tmp_path)) == len(local.shard_files)
    remote.close()


def test_object_url_and_a_replaced_entry(outputs, tmp_path: Path) -> None:
    """An ObjectURL works as a string does; an entry replaced in the bucket (new ETag) is
    fetched again, never served from the cache."""
    path, url = outputs["standard"]
    parsed = ObjectURL.parse(url)
    reader = ShardReader(parsed, cache_dir=tmp_path)
    assert reader.count == ShardReader(path).count
    store = ObjectStore(BUCKET)
    other, _ = outputs["jsd"]
    key = "runs/replaced/out.h5"
    upload(store, path, "runs/replaced")
    store.put_file(path, key)
    assert ShardReader(f"s3://{BUCKET}/{key}", cache_dir=tmp_path).mode == "standard"
    store.put_file(other, key)  # the jsd entry: its shards are not there
    with pytest.raises(RemoteError) as caught:
        ShardReader(f"s3://{BUCKET}/{key}", cache_dir=tmp_path)
    assert "replaced/jsd.shards/shard-00000.h5: shard is missing" in one_line(caught.value)


# -- (b) DataLoader workers -----------------------------------------------------------------------
def test_dataloader_two_workers_each_shard_downloaded_once(s3, outputs, tmp_path: Path) -> None:  # noqa: F811
    torch = pytest.importorskip("torch")
    from ipmix_cli.readers.torch import ShardDataset

    path, url = outputs["standard"]
    key_of = {r.file: f"runs/standard/{r.file}" for r in read_manifest(path).shards}
    gets_before = {k: s3_gets(s3, k) for k in key_of.values()}
    results = []
    for source, options in ((path, {}), (url, {"cache_dir": tmp_path})):
        ds = ShardDataset(source, extras=("row",), **options)
        loader = ds.loader(6, num_workers=2, shuffle=True, seed=7)
        results.append([tuple(t.numpy() for t in batch) for batch in loader])
    (local, remote) = results
    assert len(local) == len(remote) == 4
    for a, b in zip(local, remote, strict=True):
        assert_same(a, b)
    got = {k: s3_gets(s3, k) - gets_before[k] for k in key_of.values()}
    copy0 = {f"runs/standard/standard.shards/shard-0000{i}.h5" for i in range(3)}  # rows 0-20
    assert {k for k, n in got.items() if n} == copy0, got  # epoch 0 reads copy 0 only
    assert all(n == 1 for k, n in got.items() if k in copy0), got
    remote_ds = ShardDataset(url, cache_dir=tmp_path)
    assert torch.is_tensor(remote_ds[0][0])
    assert remote_ds.targets == ShardDataset(path).targets  # fetches every shard


def test_cache_touching_a_copy_never_makes_a_reader_refuse_it(outputs, tmp_path: Path) -> None:
    """Another process marking cached copies used (the LRU bumps their mtime, as a second
    DataLoader worker does every second) while this reader maps and unmaps them over and
    over: every read succeeds and equals the local rows. A copy's identity once included its
    mtime, and a touch between the reader's check and its map failed the read."""
    import subprocess
    import sys

    path, url = outputs["standard"]
    local = ShardReader(path)
    remote = ShardReader(url, cache_dir=tmp_path, max_open_files=1)
    remote.read(np.arange(local.count))  # everything cached
    copies = [str(p) for p in cache_files(tmp_path) if "shard-" in p.name]
    toucher = subprocess.Popen(
        [sys.executable, "-c", TOUCH_LOOP, *copies], stdout=subprocess.PIPE, text=True
    )
    try:
        assert toucher.stdout is not None and toucher.stdout.readline() == "touching\n"
        deadline = time.monotonic() + 2.0
        rounds = 0
        while time.monotonic() < deadline:
            row = rounds * 7 % local.count  # a new shard each time: unmapped, mapped again
            assert_same(remote[row], local[row])
            rounds += 1
    finally:
        toucher.kill()
        toucher.wait()
    assert rounds > 100


TOUCH_LOOP = """
import os, sys
print("touching", flush=True)
while True:
    for p in sys.argv[1:]:
        os.utime(p)
"""


def s3_gets(server, key: str) -> int:
    """GET requests the server logged for ``key``."""
    return len(re.findall(rf'"GET /{BUCKET}/{re.escape(key)} HTTP', server.log.read_text()))


def test_jax_batches_from_a_bucket(outputs, tmp_path: Path) -> None:
    """The JAX adapter's numpy batches (JAX itself is not needed with an explicit rank)."""
    from ipmix_cli.readers import jax as jax_reader

    path, url = outputs["jsd"]
    options = {"rank": 1, "world_size": 2, "shuffle": True, "seed": 3, "extras": ("row",)}
    remote = list(jax_reader.batches(url, 4, 2, cache_dir=tmp_path, **options))
    local = list(jax_reader.batches(path, 4, 2, **options))
    assert len(remote) == len(local) > 0
    for a, b in zip(remote, local, strict=True):
        assert_same(a, b)


def test_ranks_fetch_only_their_shards(outputs, tmp_path: Path) -> None:
    path, url = outputs["standard"]  # 60 rows, 3 copies of 20, shards of 7 rows
    reader = ShardReader(url, cache_dir=tmp_path / "a")
    for _ in reader.batches(4, shuffle=False, rank=0, world_size=2):  # rows 0-9
        pass
    assert cached_shards(tmp_path / "a") == ["shard-00000", "shard-00001"]
    reader = ShardReader(url, cache_dir=tmp_path / "b")
    for _ in reader.batches(4, 1, shuffle=True, rank=1, world_size=2):  # of copy 1: rows 20-39
        pass
    rows = reader.epoch_rows(1, shuffle=True, rank=1, world_size=2)
    wanted = sorted({f"shard-{r // 7:05d}" for r in rows.tolist()})
    assert set(wanted) <= {f"shard-0000{i}" for i in range(2, 6)}
    assert cached_shards(tmp_path / "b") == wanted


# -- (c) the cache limit ---------------------------------------------------------------------------
def test_cache_limit_is_never_exceeded(outputs, tmp_path: Path) -> None:
    path, url = outputs["standard"]
    sizes = [r.bytes for r in read_manifest(path).shards]
    limit = int(2.5 * max(sizes))
    local = ShardReader(path, extras=("row",))
    remote = ShardReader(url, extras=("row",), cache_dir=tmp_path, cache_limit=limit)
    assert remote.cache.limit == limit
    for epoch in (0, 1):  # every row twice: shards evicted, fetched again, parsed afresh
        for a, b in zip(
            remote.batches(5, epoch, shuffle=False, epoch_mode="all"),
            local.batches(5, epoch, shuffle=False, epoch_mode="all"),
            strict=True,
        ):
            assert_same(a, b)
            assert cache_bytes(tmp_path) <= limit
    with pytest.warns(UserWarning, match="raise cache_limit"):  # shuffled: every shard a batch
        for a, b in zip(
            remote.batches(8, 0, shuffle=True, epoch_mode="all"),
            local.batches(8, 0, shuffle=True, epoch_mode="all"),
            strict=True,
        ):
            assert_same(a, b)
            assert cache_bytes(tmp_path) <= limit
    remote.close()
    assert not [p for p in cache_files(tmp_path) if p.name.endswith(".part")]


def test_prefetch_stays_a_bounded_number_of_bytes_ahead(outputs, tmp_path: Path) -> None:
    """While a batch of shard 0 is consumed, shards 1 and 2 come down in the background (two
    shards' bytes of look-ahead here), and no further."""
    path, url = outputs["standard"]
    largest = max(r.bytes for r in read_manifest(path).shards)
    reader = ShardReader(url, cache_dir=tmp_path)
    reader._remote.ahead = 2 * largest
    batches = reader.batches(3, shuffle=False, epoch_mode="all")

    def settled(n: int) -> list[str]:
        deadline = time.monotonic() + 10
        while len(cached_shards(tmp_path)) < n:
            assert time.monotonic() < deadline, cached_shards(tmp_path)
            time.sleep(0.02)
        time.sleep(0.3)  # time enough to fetch more, were it allowed
        return cached_shards(tmp_path)

    next(batches)  # rows 0-2: shard 0
    assert settled(3) == ["shard-00000", "shard-00001", "shard-00002"]
    for _ in range(3):
        next(batches)  # rows 9-11: shard 1, so shard 3 may come
    assert settled(4) == [f"shard-0000{i}" for i in range(4)]
    reader.close()


def test_cache_limit_below_one_shard_is_refused(outputs, tmp_path: Path) -> None:
    path, url = outputs["standard"]
    largest = max(r.bytes for r in read_manifest(path).shards)
    with pytest.raises(ValueError, match="largest shard") as caught:
        ShardReader(url, cache_dir=tmp_path, cache_limit=largest - 1)
    assert url in one_line(caught.value)
    with pytest.raises(ValueError, match="cache_limit"):
        ShardReader(url, cache_dir=tmp_path, cache_limit=0)


# -- (d) a corrupt object ------------------------------------------------------------------------
def data_offset(shard: Path) -> int:
    """A byte offset inside the image data of ``shard``."""
    with h5py.File(shard, "r") as f:
        dset = f["images"]
        offset = dset.id.get_offset()
        if offset is None:
            offset = dset.id.get_chunk_info(0).byte_offset
    return int(offset) + 100


def test_corrupt_object_is_refused_and_never_cached(s3, outputs, tmp_path: Path) -> None:  # noqa: F811
    path, _ = outputs["standard"]
    url = upload(ObjectStore(BUCKET), path, "runs/corrupt")
    record = read_manifest(path).shards[1]
    data = bytearray((path.parent / record.file).read_bytes())
    data[data_offset(path.parent / record.file)] ^= 0x10  # same size, one bit in the pixels
    s3.client().put_object(Bucket=BUCKET, Key=f"runs/corrupt/{record.file}", Body=bytes(data))
    reader = ShardReader(url, cache_dir=tmp_path)  # the size is right: opening is fine
    np.testing.assert_array_equal(reader.read([0, 1])["labels"], ShardReader(path).labels[:2])
    with pytest.raises(RemoteError) as caught:
        reader.read([record.start])
    text = one_line(caught.value)
    assert text.startswith(f"s3://{BUCKET}/runs/corrupt/{record.file}: wrong checksum"), text
    assert record.checksum in text
    with pytest.raises(RemoteError, match="wrong checksum"):  # again: fetched and refused again
        reader.read([record.start + 1])
    assert "shard-00001" not in cached_shards(tmp_path)
    assert not [p for p in cache_files(tmp_path) if p.name.endswith(".part")]


# -- (e) the server going away, (f) no credentials -----------------------------------------------
@pytest.fixture()
def own_server(outputs, tmp_path: Path) -> Iterator:
    """A server of this test's own (it is stopped mid-read), holding the standard output."""
    server = start_server(tmp_path / "own-s3")
    try:
        with environment({"AWS_ENDPOINT_URL": server.endpoint}):
            server.make_bucket("gone")
            path, _ = outputs["standard"]
            yield server, path, upload(ObjectStore("gone"), path, "run")
    finally:
        server.stop()


def test_server_gone_mid_read_is_one_line_after_bounded_retries(own_server, tmp_path) -> None:
    server, path, url = own_server
    largest = max(r.bytes for r in read_manifest(path).shards)
    reader = ShardReader(url, cache_dir=tmp_path / "cache", cache_limit=int(2.5 * largest))
    batches = reader.batches(4, shuffle=False, epoch_mode="all")  # one shard of look-ahead
    next(batches), next(batches)
    server.stop()
    t0 = time.monotonic()
    with pytest.raises(RemoteError) as caught:
        for _ in batches:
            pass
    took = time.monotonic() - t0
    text = one_line(caught.value)
    assert re.match(r"s3://gone/run/standard\.shards/shard-\d+\.h5: cannot reach", text), text
    assert "after 4 tries" in text and took < 5, (took, text)
    reader.close()
    deadline = time.monotonic() + 10  # prefetches in flight give up (bounded) and clean up
    while [p for p in cache_files(tmp_path / "cache") if p.name.endswith(".part")]:
        assert time.monotonic() < deadline, "a temporary download was left behind"
        time.sleep(0.05)


@contextlib.contextmanager
def no_credentials() -> Iterator[None]:
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
    saved = {k: os.environ.pop(k, None) for k in names}
    try:
        with environment(
            {"AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
        ):
            yield
    finally:
        os.environ.update({k: v for k, v in saved.items() if v is not None})


def test_missing_credentials_is_one_line(outputs, tmp_path: Path, monkeypatch) -> None:
    _, url = outputs["standard"]
    monkeypatch.setattr(store_module, "_STORES", {})  # a process that never had credentials
    t0 = time.monotonic()
    with no_credentials(), pytest.raises(RemoteError) as caught:
        ShardReader(url, cache_dir=tmp_path)
    text = one_line(caught.value)
    assert text.startswith(url) and "no S3 credentials" in text, text
    assert time.monotonic() - t0 < 10
    monkeypatch.setattr(store_module, "_STORES", {})  # the credentials are back
    assert ShardReader(url, cache_dir=tmp_path).count == 60


def test_missing_entry_and_shard_objects_are_one_line(outputs, tmp_path: Path) -> None:
    path, _ = outputs["standard"]
    with pytest.raises(RemoteError, match="entry object does not exist"):
        ShardReader(f"s3://{BUCKET}/runs/nothing/out.h5", cache_dir=tmp_path)
    store = ObjectStore(BUCKET)
    url = upload(store, path, "runs/holed")
    record = read_manifest(path).shards[4]
    store.delete([f"runs/holed/{record.file}"])
    with pytest.raises(RemoteError) as caught:
        ShardReader(url, cache_dir=tmp_path)
    assert one_line(caught.value) == (
        f"s3://{BUCKET}/runs/holed/{record.file}: shard is missing (it should hold "
        f"{record.count} images)"
    )
    with pytest.raises(ShardError):  # a local path is still a local path
        ShardReader(tmp_path / "missing.h5")
