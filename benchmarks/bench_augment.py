"""Single-core IPMix throughput at 32 px (CIFAR preset) and 224 px (ImageNet preset).

Run: ``python benchmarks/bench_augment.py`` (about a minute; ``--quick`` for ~15 s).

Prints images/s per core (compile time excluded: every kernel is warmed up first) and the
ratio to the reference implementation's per-core throughput (PyTorch DataLoader + PIL:
333 images/s at 32 px, 120 images/s at 224 px). Also prints the cost of each image op, since
those are a separate component and can dominate at 224 px.

Inputs are synthetic "natural-looking" images (blurred noise plus gradients, so the ops see
smooth content rather than white noise); the mixing set is synthetic too. Timings on a shared
machine are noisy: the best of several repeats is reported next to the median.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from fractals.rng import new_state  # noqa: E402
from ipmix_cli import kernel_caches  # noqa: E402
from ipmix_cli.augment.config import IPMixConfig  # noqa: E402
from ipmix_cli.augment.engine import augment_batch, augment_images, warmup  # noqa: E402
from ipmix_cli.augment.mixing_set import MixingSet  # noqa: E402
from ipmix_cli.augment.ops.dispatch import OP_NAMES, apply_image_op  # noqa: E402
from ipmix_cli.augment.pretransform import random_resized_crop  # noqa: E402

REFERENCE_32 = 333.0
REFERENCE_224 = 120.0


def natural_images(n: int, H: int, W: int, seed: int) -> np.ndarray:
    """Smooth random RGB images: upsampled noise, a gradient and a few bright blobs."""
    rng = np.random.default_rng(seed)
    cell = max(4, min(H, W) // 8)
    small = rng.random((n, H // cell + 2, W // cell + 2, 3), dtype=np.float32)
    big = small.repeat(cell, axis=1).repeat(cell, axis=2)[:, :H, :W]
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    grad = ((yy / H)[None, :, :, None] + (xx / W)[None, :, :, None]) / 2
    img = 0.6 * big + 0.4 * grad * rng.random((n, 1, 1, 3), dtype=np.float32)
    img += 0.05 * rng.standard_normal((n, H, W, 3), dtype=np.float32)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def timed(fn, n_images: int, repeats: int) -> tuple[float, float, float]:
    """(best, median, best-by-CPU-time) images/s over ``repeats`` calls of ``fn``. The CPU-time
    figure (this process's user + system time) is less disturbed by other processes sharing
    the core, so it is the better per-core estimate on a busy machine."""
    rates, cpu_rates = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        rates.append(n_images / (time.perf_counter() - t0))
        cpu_rates.append(n_images / max(time.process_time() - c0, 1e-9))
    return max(rates), statistics.median(rates), max(cpu_rates)


def report(label: str, rates: tuple[float, float, float], reference: float) -> None:
    best, median, cpu = rates
    print(
        f"  {label:<52s} {best:7.0f} img/s (median {median:6.0f}, by CPU time {cpu:6.0f})"
        f"  x{best / reference:5.1f} vs reference {reference:.0f}/s"
    )


def op_costs(size: int, repeats: int) -> dict[str, float]:
    """Microseconds per call of each image op on one natural image of ``size``."""
    img = natural_images(1, size, size, 7)[0]
    costs = {}
    for op, name in enumerate(OP_NAMES):
        apply_image_op(op, img, 1.0, False)  # compile / load
        t0 = time.perf_counter()
        for i in range(repeats):
            apply_image_op(op, img, 0.1 + (i % 10) * 0.29, bool(i & 1))
        costs[name] = (time.perf_counter() - t0) / repeats * 1e6
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and repeats")
    args = parser.parse_args()
    n32, n224, repeats = (1024, 48, 3) if args.quick else (1024, 128, 5)

    cifar = IPMixConfig.preset("cifar")
    imnet = IPMixConfig.preset("imagenet")
    t0 = time.perf_counter()
    for config in (cifar, imnet):
        warmup(config)
    print(f"warm-up (compile or cache load): {time.perf_counter() - t0:.1f} s")

    mix32 = MixingSet.from_pictures(natural_images(200, 36, 36, 1), cifar)
    images32 = natural_images(n32, 32, 32, 2)
    sources32 = np.arange(n32)
    print(f"\n32 px, CIFAR preset (batches of {n32}, mixing set of {len(mix32)} pictures):")
    for label, config in (
        ("CIFAR pre-transform, one view", cifar),
        ("CIFAR pre-transform, JSD (clean + 2 views) per sample", cifar.replace(jsd=True)),
    ):
        augment_batch(images32[:8], sources32[:8], 0, mix32, config, 0)
        rates = timed(
            lambda c=config: augment_batch(images32, sources32, 1, mix32, c, 0), n32, repeats
        )
        report(label, rates, REFERENCE_32)

    mix224 = MixingSet.from_pictures(natural_images(32, 256, 256, 3), imnet)
    rng = np.random.default_rng(4)
    shapes = rng.integers(256, 401, (n224, 2))
    sources224 = [natural_images(1, int(h), int(w), 100 + i)[0] for i, (h, w) in enumerate(shapes)]
    images224 = natural_images(n224, 224, 224, 5)
    idx = np.arange(n224)
    print(f"\n224 px, ImageNet preset (batches of {n224}, mixing set of {len(mix224)} pictures):")
    cases = (
        (
            "RandomResizedCrop from 256-400 px sources, one view",
            lambda: augment_images(sources224, idx, 0, mix224, imnet, 0),
        ),
        (
            "224 px inputs, RandomResizedCrop + flip, one view",
            lambda: augment_batch(images224, idx, 0, mix224, imnet, 0),
        ),
        (
            "224 px inputs, no pre-transform, one view",
            lambda: augment_batch(images224, idx, 0, mix224, imnet.replace(pre="none"), 0),
        ),
        (
            "RandomResizedCrop from 256-400 px sources, JSD",
            lambda: augment_images(sources224, idx, 0, mix224, imnet.replace(jsd=True), 0),
        ),
        (
            "  (of which RandomResizedCrop alone, Pillow resize)",
            lambda: [
                random_resized_crop(img, new_state(0, i), (224, 224))
                for i, img in enumerate(sources224)
            ],
        ),
    )
    for label, fn in cases:
        report(label, timed(fn, n224, repeats), REFERENCE_224)

    print("\nimage-op cost per call (us), 32 px | 224 px:")
    c32 = op_costs(32, 400)
    c224 = op_costs(224, 20 if args.quick else 40)
    for name in OP_NAMES:
        print(f"  {name:<14s} {c32[name]:8.1f} | {c224[name]:8.1f}")
    # expected image-op calls per view: k chains x P(image chain) x E[n_ops] (+ the ImageNet
    # preset's augmented patch sources: P(patch chain) x E[n_ops] x 1/2)
    e_ops = imnet.t / 2
    calls32 = cifar.k * 0.5 * e_ops
    calls224 = imnet.k * (0.5 * e_ops + 0.5 * e_ops * 0.5)
    mean32 = statistics.mean(c32[n] for n in OP_NAMES[:10])
    mean224 = statistics.mean(c224[n] for n in OP_NAMES[:10])
    print(
        f"  default-list mean: {mean32:.1f} us at 32 px x {calls32:.2f} calls/view = "
        f"{mean32 * calls32:.0f} us/view; {mean224:.0f} us at 224 px x {calls224:.2f} calls/view"
        f" = {mean224 * calls224:.0f} us/view"
    )


if __name__ == "__main__":
    kernel_caches.refresh()  # as every command does: never time kernels of older sources
    main()
