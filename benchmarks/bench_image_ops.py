"""Microbenchmark: microseconds per image-level op, numba kernels vs Pillow.

For each of the 15 ops at 32 x 32 and 224 x 224 it times ``apply_image_op`` called from
Python (so the figure includes numba's dispatch overhead, ~0.5-1 us, which the recipe kernel
does not pay) and the same op done the reference way with Pillow (fromarray + op +
asarray). Kernels are compiled and warmed before timing; each figure is the best of a few
repeats, to be robust on a shared machine. Run: ``python benchmarks/bench_image_ops.py``
(``--quick`` for fewer repeats).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from ipmix_cli import kernel_caches
from ipmix_cli.augment.ops.dispatch import OP_NAMES, apply_image_op

LEVEL = 2.0  # a mid-range severity draw; op costs barely depend on it
NEGATE = True


def pil_op(name: str, img: Image.Image, level: float, negate: bool) -> Image.Image:
    """The reference's way of doing op ``name`` with Pillow (same parameter mapping)."""
    w, h = img.size
    sign = -1 if negate else 1
    if name == "equalize":
        return ImageOps.equalize(img)
    if name == "posterize":
        return ImageOps.posterize(img, 4 - int(level * 4 / 10))
    if name == "rotate":
        return img.rotate(sign * int(level * 30 / 10), resample=Image.BILINEAR)
    if name == "solarize":
        return ImageOps.solarize(img, 256 - int(level * 256 / 10))
    if name in ("shear_x", "shear_y"):
        s = sign * (level * 0.3 / 10)
        m = (1, s, 0, 0, 1, 0) if name == "shear_x" else (1, 0, 0, s, 1, 0)
        return img.transform((w, h), Image.AFFINE, m, resample=Image.BILINEAR)
    if name in ("translate_x", "translate_y"):
        d = sign * int(level * ((w if name == "translate_x" else h) / 3) / 10)
        m = (1, 0, d, 0, 1, 0) if name == "translate_x" else (1, 0, 0, 0, 1, d)
        return img.transform((w, h), Image.AFFINE, m, resample=Image.BILINEAR)
    if name == "mirror":
        return ImageOps.mirror(img)
    if name == "invert":
        return ImageOps.invert(img)
    if name == "autocontrast":
        return ImageOps.autocontrast(img, 10 - level * 10 / 10)
    factor = level * 1.8 / 10 + 0.1
    cls = {
        "color": ImageEnhance.Color,
        "contrast": ImageEnhance.Contrast,
        "brightness": ImageEnhance.Brightness,
        "sharpness": ImageEnhance.Sharpness,
    }[name]
    return cls(img).enhance(factor)


def pil_roundtrip(name: str, img: np.ndarray) -> np.ndarray:
    """fromarray + op + asarray, the cost a PIL-based pipeline pays per op."""
    return np.asarray(pil_op(name, Image.fromarray(img), LEVEL, NEGATE))


def best_us(fn: Callable[[], object], n: int, repeats: int) -> float:
    """Best-of-``repeats`` mean time of ``n`` calls, in microseconds."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


def natural_image(size: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth gradient with edges and mild noise: closer to a photo than uniform noise
    (matters for histogram ops, whose cost depends on runs of equal values)."""
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([x, y, 0.5 * (x + y)], -1) * 200 + 20
    base[size // 4 : size // 2, size // 3 : 2 * size // 3] = (230, 40, 90)
    noise = rng.normal(0, 6, base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    repeats = 3 if args.quick else 5
    rng = np.random.default_rng(0)
    print(f"{'op':<13} {'size':>5} {'numba us':>10} {'pillow us':>10} {'speed-up':>9}")
    for size in (32, 224):
        img = natural_image(size, rng)
        n = 2000 if size == 32 else 100
        for op, name in enumerate(OP_NAMES):
            run_nb = partial(apply_image_op, op, img, LEVEL, NEGATE)
            run_pil = partial(pil_roundtrip, name, img)
            run_nb()  # compile / load from cache, warm up
            run_pil()
            t_nb = best_us(run_nb, n, repeats)
            t_pil = best_us(run_pil, max(n // 4, 20), repeats)
            print(f"{name:<13} {size:>5} {t_nb:>10.2f} {t_pil:>10.2f} {t_pil / t_nb:>8.1f}x")


if __name__ == "__main__":
    kernel_caches.refresh()  # as every command does: never time kernels of older sources
    main()
