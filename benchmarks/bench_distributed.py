"""Overhead of the dask backend against loky, both on 2 local worker processes, for ``ipmix
augment`` (32 px, CIFAR preset) and ``ipmix fractals generate``; the outputs must be identical.

Two comparisons per job:

* steady state: loky's worker pool and a dask ``LocalCluster`` (2 single-threaded worker
  processes) are both started and warmed by a small job first, as on a cluster that stays up;
* cold: loky's pool and dask's local cluster (``--backend dask`` without ``--scheduler``) are
  started inside the timed run, as a one-off ``ipmix augment --backend dask`` does.

The acceptance bar is steady-state overhead <= 15%. Numba's compile is excluded (its cache is
filled before timing), and each timing is the best of ``--repeat`` runs because the machine's
2 cores are shared.

    python benchmarks/bench_distributed.py [--images 200000] [--copies 2] [--count 3072]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from distributed import Client, LocalCluster
from joblib.externals.loky import get_reusable_executor

from fractals import FractalOptions
from ipmix_cli import kernel_caches
from ipmix_cli.augment.config import IPMixConfig
from ipmix_cli.jobs.augment_job import run_augment
from ipmix_cli.jobs.augment_spec import AugmentSpec
from ipmix_cli.jobs.bank_job import BankSpec, generate_bank

WORKERS = 2


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, keyed by relative path."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def differences(a: dict[str, str], b: dict[str, str]) -> list[str]:
    return sorted(name for name in a.keys() | b.keys() if a.get(name) != b.get(name))


def compare(
    repeat: int, runs: dict[str, Callable[[Path], None]], root: Path, name: str
) -> dict[str, tuple[float, dict[str, str]]]:
    """Per backend: the fastest wall time of ``repeat`` runs into fresh folders, and the
    output's digests (which must not change from run to run). Backends alternate within each
    repeat, so load from other processes on the shared machine hits both alike."""
    times: dict[str, list[float]] = {backend: [] for backend in runs}
    first: dict[str, dict[str, str]] = {}
    for attempt in range(repeat):
        for backend, run in runs.items():
            folder = root / f"{name}-{backend}-{attempt}"
            folder.mkdir()
            started = time.perf_counter()
            run(folder)
            times[backend].append(time.perf_counter() - started)
            got = digests(folder)
            if first.setdefault(backend, got) != got:
                where = differences(first[backend], got)[:5]
                raise AssertionError(f"{name} {backend}: runs differ in {where}")
            shutil.rmtree(folder)
    return {backend: (min(times[backend]), first[backend]) for backend in runs}


def report(
    job: str, loky: tuple[float, dict[str, str]], dask: tuple[float, dict[str, str]], mode: str
) -> float:
    if loky[1] != dask[1]:
        raise AssertionError(
            f"{job} ({mode}): dask differs from loky in {differences(*[loky[1], dask[1]])[:5]}"
        )
    overhead = dask[0] / loky[0] - 1
    print(
        f"{job:8s} {mode:12s} loky {loky[0]:6.2f} s   dask {dask[0]:6.2f} s   "
        f"overhead {overhead:+6.1%}   (outputs identical)"
    )
    return overhead


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=200_000)
    parser.add_argument("--copies", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=None, help="default: ipmix's (~16 MiB)")
    parser.add_argument("--count", type=int, default=3072, help="fractal bank size")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    config = IPMixConfig.preset("cifar")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bank = root / "bank"
        generate_bank(BankSpec(bank, 200, 0, FractalOptions(size=64, points=20_000)), jobs=1)
        rng = np.random.default_rng(0)
        low = rng.integers(0, 256, (args.images, 8, 8, 3), dtype=np.uint8)
        data = root / "data.npz"
        np.savez(
            data,
            images=low.repeat(4, axis=1).repeat(4, axis=2),
            labels=np.arange(args.images) % 10,
        )
        small = root / "small.npz"
        np.savez(small, images=np.zeros((64, 32, 32, 3), np.uint8), labels=np.zeros(64, int))
        bank_options = FractalOptions(size=128, points=20_000)

        def augment(backend: str, source: Path = data) -> Callable[[Path], None]:
            shard_size = args.shard_size if source == data else 16  # warm-ups: several tasks

            def run(folder: Path) -> None:
                spec = AugmentSpec(
                    source,
                    bank,
                    folder / "out.h5",
                    config,
                    copies=args.copies,
                    shard_size=shard_size,
                )
                run_augment(spec, jobs=WORKERS, backend=backend)

            return run

        def fractals(backend: str, count: int = args.count) -> Callable[[Path], None]:
            def run(folder: Path) -> None:
                spec = BankSpec(folder / "bank", count, 0, bank_options)
                generate_bank(spec, jobs=WORKERS, backend=backend)

            return run

        def warm(make: Callable[..., Callable[[Path], None]], backend: str) -> Callable:
            return make(backend, small) if make is augment else make(backend, 256)

        rows = args.images * args.copies
        shard = args.shard_size or AugmentSpec(data, bank, root, config).rows_per_shard()
        print(
            f"augment: {rows:,} images of 32 px in {-(-rows // shard)} shards; "
            f"fractals: {args.count} images of 128 px; {WORKERS} workers; best of {args.repeat}"
        )
        overheads = {}
        jobs = (("augment", augment), ("fractals", fractals))
        # Cold: each timed run starts its own pool / local cluster (compile cache filled first).
        for job, make in jobs:
            compare(1, {"loky": warm(make, "loky")}, root, f"{job}-compile")

            def loky_cold(folder: Path, make: Callable = make) -> None:
                get_reusable_executor().shutdown(wait=True)  # the next run starts a fresh pool
                make("loky")(folder)

            result = compare(args.repeat, {"loky": loky_cold, "dask": make("dask")}, root, job)
            overheads[(job, "cold")] = report(job, result["loky"], result["dask"], "cold start")
        # Steady state: pools already up and warm.
        with (
            LocalCluster(
                n_workers=WORKERS,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
            ) as cluster,
            Client(cluster),
        ):
            for job, make in jobs:
                compare(1, {b: warm(make, b) for b in ("loky", "dask")}, root, f"{job}-warm")
                result = compare(
                    args.repeat, {"loky": make("loky"), "dask": make("dask")}, root, job
                )
                overheads[(job, "steady")] = report(
                    job, result["loky"], result["dask"], "steady state"
                )
        worst = max(v for (_, mode), v in overheads.items() if mode == "steady")
        print(f"worst steady-state overhead: {worst:+.1%} (target <= +15%)")


if __name__ == "__main__":
    kernel_caches.refresh()  # as every command does: never time kernels of older sources
    main()
