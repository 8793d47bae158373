"""End-to-end throughput of ``ipmix augment`` (read, augment, checksum, write shards) against
the engine alone on one core, at 32 px with the CIFAR preset.

The acceptance bar: the whole job on 2 cores reaches >= 1.5x the engine's single-core figure, so
I/O and orchestration do not dominate. Numba's compile happens in a small warm-up job first (its
cache then serves every worker), so the timed runs measure steady-state work plus real worker
start-up.

    python benchmarks/bench_augment_cli.py [--images 50000] [--copies 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from fractals import FractalOptions
from ipmix_cli.augment.config import IPMixConfig
from ipmix_cli.augment.engine import augment_batch, warmup
from ipmix_cli.augment.mixing_set import MixingSet
from ipmix_cli.augment_job import AugmentSpec, run_augment
from ipmix_cli.bank import BankSpec, generate_bank


def smooth_images(n: int, size: int, seed: int) -> np.ndarray:
    """Natural-looking-enough inputs: upsampled low-resolution noise (cheap to make)."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (n, size // 4, size // 4, 3), dtype=np.uint8)
    return np.ascontiguousarray(low.repeat(4, axis=1).repeat(4, axis=2))


def engine_rate(images: np.ndarray, mixing: MixingSet, config: IPMixConfig) -> float:
    sources = np.arange(len(images), dtype=np.int64)
    augment_batch(images[:256], sources[:256], 0, mixing, config, 0)
    started = time.perf_counter()
    for start in range(0, len(images), 1024):
        block = slice(start, start + 1024)
        augment_batch(images[block], sources[block], 0, mixing, config, 0)
    return len(images) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--copies", type=int, default=2)
    args = parser.parse_args()
    config = IPMixConfig.preset("cifar")
    warmup(config)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bank = root / "bank"
        generate_bank(BankSpec(bank, 200, 0, FractalOptions(size=64, points=20_000)), jobs=-1)
        images = smooth_images(args.images, 32, 0)
        labels = np.arange(args.images) % 10
        data = root / "data.npz"
        np.savez(data, images=images, labels=labels)
        mixing = MixingSet.from_path(bank, config)
        single = engine_rate(images[:20_000], mixing, config)
        print(f"engine alone, 1 core, 32 px CIFAR preset: {single:,.0f} images/s")
        warm = root / "warm.npz"
        np.savez(warm, images=images[:64], labels=labels[:64])
        for jobs in (1, 2):
            run_augment(AugmentSpec(warm, bank, root / f"warm{jobs}.h5", config), jobs=jobs)
        rates = {}
        for jobs in (1, 2):
            spec = AugmentSpec(data, bank, root / f"out{jobs}.h5", config, copies=args.copies)
            summary = run_augment(spec, jobs=jobs)
            rates[jobs] = summary.images / summary.seconds
            print(
                f"ipmix augment, {jobs} worker(s): {summary.images:,} images in "
                f"{summary.seconds:.2f} s = {rates[jobs]:,.0f} images/s "
                f"({summary.shards} shards, {summary.bytes / 1e6:.0f} MB)"
            )
        ratio = rates[2] / single
        print(f"end-to-end on 2 cores / engine on 1 core: {ratio:.2f}x (target >= 1.5x)")
        print(f"end-to-end 1 -> 2 workers: {rates[2] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
