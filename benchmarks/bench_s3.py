"""Reading an output straight from a bucket, against the bucket itself and the local output.

Run: ``python benchmarks/bench_s3.py`` (about a minute; ``--quick`` for a smaller output).

Starts its own ``moto_server`` on loopback (``moto[server]``, as the tests do), writes an output
of 96 px rows (~330 MB in 12 shards of 1,000 rows; what ``ipmix augment`` writes, built here
with the shard writer for speed), uploads it in the layout ``augment --out s3://`` writes, and
measures in the same run:

1. the server's throughput: whole-object GETs of every shard with ``ObjectStore.get_file``,
   one at a time and with as many in flight as the reader's prefetch uses;
2. a cold first epoch through ``ShardReader(url).batches(...)`` with an empty cache (download,
   checksum verification and reading), in MB/s and as a share of (1);
3. a warm epoch from the cache (a new reader, so nothing but the files is reused) against the
   same epoch read from the local output, sequential and shuffled: the ratio.

Targets: cold >= 80 % of the server's throughput, warm within 10 % of local.

On a small machine the loopback server competes with the reader for the CPU: ``moto_server``
takes a core, and the cold epoch adds CRC-32 verification of every shard (~4 GB/s on one core)
and its own reading to what a bare GET costs, so cold/server is a lower bound there; against a
real store the verification runs beside the network in the prefetch threads.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from s3server import environment, start_server  # noqa: E402 - the tests' loopback server

from ipmix_cli.readers import ShardReader  # noqa: E402
from ipmix_cli.remote.cache import PREFETCH_THREADS  # noqa: E402
from ipmix_cli.remote.store import ObjectStore  # noqa: E402
from ipmix_cli.shards import read_manifest, shard_path, write_entry, write_shard  # noqa: E402

SIZE = 96
BUCKET = "bench"


def build(entry: Path, shards: int, rows: int) -> int:
    """An uncompressed output of ``shards`` x ``rows`` random rows; its shard bytes."""
    rng = np.random.default_rng(0)
    infos = []
    for index in range(shards):
        start = index * rows
        arrays = {
            "images": rng.integers(0, 256, (rows, SIZE, SIZE, 3), dtype=np.uint8),
            "labels": rng.integers(0, 1000, rows),
            "source_index": np.arange(start, start + rows),
            "copy_index": np.zeros(rows, np.int64),
        }
        infos.append(write_shard(shard_path(entry, index), arrays))
    write_entry(entry, infos, {"copies": 1, "num_sources": shards * rows})
    return sum(r.bytes or 0 for r in read_manifest(entry).shards)


def upload(store: ObjectStore, entry: Path, prefix: str) -> str:
    for record in read_manifest(entry).shards:
        store.put_file(entry.parent / record.file, f"{prefix}/{record.file}")
    store.put_file(entry, f"{prefix}/{entry.name}")
    return f"s3://{BUCKET}/{prefix}/{entry.name}"


def server_rate(store: ObjectStore, keys: list[str], folder: Path, threads: int) -> float:
    """Seconds to GET every key whole, ``threads`` at a time."""
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda k: store.get_file(k, folder / k.replace("/", "_")), keys))
    took = time.perf_counter() - t0
    shutil.rmtree(folder)
    return took


def epoch_s(reader: ShardReader, batch: int, shuffle: bool) -> float:
    t0 = time.perf_counter()
    n = 0
    for images, _ in reader.batches(batch, shuffle=shuffle, seed=1):
        n += len(images)
    assert n == reader.count
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 shards (~110 MB)")
    parser.add_argument("--shards", type=int, default=12)
    parser.add_argument("--rows", type=int, default=1000, help="rows per shard")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    shards = 4 if args.quick else args.shards
    root = Path(tempfile.mkdtemp(prefix="ipmix-bench-s3-"))
    server = None
    try:
        entry = root / "out" / "out.h5"
        entry.parent.mkdir()
        total = build(entry, shards, args.rows)
        mb = total / 1e6
        print(f"output: {shards} shards x {args.rows} rows of {SIZE} px = {mb:,.0f} MB")
        server = start_server(root / "s3")
        with environment({**server.env, "IPMIX_CACHE_DIR": str(root / "unused")}):
            server.make_bucket(BUCKET)
            store = ObjectStore(BUCKET)
            url = upload(store, entry, "run")
            keys = [f"run/{r.file}" for r in read_manifest(entry).shards]
            server_rate(store, keys[:1], root / "warmup", 1)

            one = min(server_rate(store, keys, root / "get", 1) for _ in range(2))
            print("1. server, whole-object GETs (ObjectStore.get_file), and")
            print("2. cold first epoch, empty cache: fetch + verify + read, sequential batches")
            print("   (runs interleaved: the loopback server's speed varies by 20 % run to run)")
            print(f"   one GET at a time              best {mb / one:6.0f} MB/s")
            gets, colds, opens = [], [], []
            for k in range(args.repeats):
                gets.append(server_rate(store, keys, root / "get", PREFETCH_THREADS))
                cache = root / f"cache-{k}"
                t0 = time.perf_counter()
                reader = ShardReader(url, cache_dir=cache)  # HEAD, GET and LIST
                opens.append(time.perf_counter() - t0)
                colds.append(epoch_s(reader, args.batch, shuffle=False))
                reader.close()
                if k < args.repeats - 1:
                    shutil.rmtree(cache)
            g_best, g_med = mb / min(gets), mb / float(np.median(gets))
            c_best, c_med = mb / min(colds), mb / float(np.median(colds))
            print(
                f"   {PREFETCH_THREADS} GETs in flight        best {g_best:6.0f}  "
                f"median {g_med:6.0f} MB/s"
            )
            print(f"   ShardReader(s3://).batches best {c_best:6.0f}  median {c_med:6.0f} MB/s "
                  f"(+ {1000 * min(opens):.0f} ms to open the reader)")  # fmt: skip
            print(f"   cold / server: best {c_best / g_best:.0%}, median {c_med / g_med:.0%}")

            warm_repeats = 4 * args.repeats
            print(f"3. warm epoch (cache) vs local output, {warm_repeats} epochs each, "
                  "interleaved: best (median)")  # fmt: skip
            local = ShardReader(entry)
            warm_reader = ShardReader(url, cache_dir=root / f"cache-{args.repeats - 1}")
            for shuffle in (False, True):
                epoch_s(local, args.batch, shuffle)
                epoch_s(warm_reader, args.batch, shuffle)  # page cache and maps warm
                loc, warm = [], []
                for _ in range(warm_repeats):
                    loc.append(epoch_s(local, args.batch, shuffle))
                    warm.append(epoch_s(warm_reader, args.batch, shuffle))
                name = "shuffled" if shuffle else "sequential"
                lm, wm = float(np.median(loc)), float(np.median(warm))
                print(
                    f"   {name:<10s} local {mb / min(loc):6.0f} ({mb / lm:6.0f}) MB/s   cache "
                    f"{mb / min(warm):6.0f} ({mb / wm:6.0f}) MB/s   cache/local = "
                    f"{min(loc) / min(warm):.3f} ({lm / wm:.3f})"
                )
            fresh = []
            for _ in range(args.repeats):  # a new reader each time: open + cache hits
                t0 = time.perf_counter()
                epoch_s(ShardReader(url, cache_dir=root / f"cache-{args.repeats - 1}"),
                        args.batch, False)  # fmt: skip
                fresh.append(time.perf_counter() - t0)
            print(f"   new reader on a warm cache (HEAD + listing + {shards} opens + epoch): "
                  f"{mb / min(fresh):.0f} MB/s")  # fmt: skip
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
