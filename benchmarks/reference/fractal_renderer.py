"""A stand-in for Anderson & Farrell's fractal renderer, to time ipmix against in the same run.

Anderson & Farrell ("Improving Fractal Pre-training", WACV 2022) publish a numba renderer; this
module re-implements, in our own code, how it makes and saves one image, keeping the costs that
make it slower than ours:

* Sampling in Python with a numpy ``Generator``: n uniform in {2, 3, 4}; rotations (angle
  U(-pi, pi)) times random sign flips for U and V; singular-value pairs drawn one at a time
  under the sigma-factor budget alpha ~ U((5 + n) / 2, (6 + n) / 2); translations U(-1, 1).
* The chaos game in numba, *storing every coordinate* (an (N, 2) float64 array), one uniform
  draw per point and a linear search of the cumulative |det| probabilities, starting at the
  fixed point of map 0; then a separate min/max pass for the window.
* Graded 3 x 3 patch render (a random non-empty subset of the 9 offsets per image) into a
  float64 image, divided by its maximum.
* Colour as 8-bit HSV (hue ``x * 255 + U(0, 255)`` wrapping at 256, saturation U(0.3, 1),
  value U(0.5, 1)) converted the way OpenCV's 8-bit HSV->RGB does (hue in 0..180, so larger
  hues wrap once more); the diamond-square plasma on a (2**n + 1)-square float64 grid with
  ``np.random.uniform`` noise, coloured in HSV the same way; fractal pixels overwrite it.
* Saving with ``PIL.Image.fromarray(image).save(path)``: Pillow's defaults (zlib level 6,
  adaptive row filters).

It is not bit-compatible with the original (different random streams); only its work per image
is meant to match. On the project's machine kind the original measured about 165 images/s per
core without background and 133 with it, rendering only.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numba as nb
import numpy as np
from PIL import Image


def sample_singular_values(rng: np.random.Generator, n: int, alpha: float) -> np.ndarray:
    """n pairs 1 >= s1 >= s2 >= 0 with sum(s1 + 2 s2) == alpha, drawn pair by pair."""
    out = np.empty((n, 2))
    left = alpha
    for i in range(n - 1):
        least = left - 3.0 * (n - 1 - i)  # what this pair must take so the rest can finish
        s1 = rng.uniform(max(0.0, least / 3.0), min(1.0, left))
        s2 = rng.uniform(max(0.0, (least - s1) / 2.0), min(s1, (left - s1) / 2.0))
        left -= s1 + 2.0 * s2
        out[i] = s1, s2
    s2 = rng.uniform(max(0.0, (left - 1.0) / 2.0), left / 3.0)
    out[n - 1] = left - 2.0 * s2, s2
    return out


def sample_system(rng: np.random.Generator) -> np.ndarray:
    """An (n, 2, 3) contractive system, n in {2, 3, 4}, by the SVD parameterisation."""
    n = int(rng.integers(2, 5))
    flips = np.sign(rng.random((2 * n, 2, 1)) - 0.5) * np.eye(2)
    angle = rng.uniform(-np.pi, np.pi, 2 * n)
    rot = np.empty((2 * n, 2, 2))
    rot[:, 0, 0] = np.cos(angle)
    rot[:, 0, 1] = -np.sin(angle)
    rot[:, 1, 0] = np.sin(angle)
    rot[:, 1, 1] = np.cos(angle)
    uv = rot @ flips
    alpha = rng.uniform((5 + n) / 2, (6 + n) / 2)
    sv = sample_singular_values(rng, n, alpha)
    system = np.empty((n, 2, 3))
    system[:, :, :2] = uv[:n] * sv[:, None, :] @ uv[n:]
    system[:, :, 2] = rng.uniform(-1.0, 1.0, (n, 2))
    return system


@nb.njit(cache=True)
def seed_numba(seed: int) -> None:
    np.random.seed(seed)


@nb.njit(cache=True)
def iterate(system: np.ndarray, n_points: int) -> np.ndarray:
    """The chaos game, every point kept: (n_points, 2) float64."""
    det = system[:, 0, 0] * system[:, 1, 1] - system[:, 0, 1] * system[:, 1, 0]
    p = np.abs(det)
    cumulative = np.cumsum(p / p.sum())
    coords = np.empty((n_points, 2))
    a0 = system[0]
    inv = 1.0 / (1.0 + det[0] - a0[0, 0] - a0[1, 1])
    x = inv * ((1.0 - a0[1, 1]) * a0[0, 2] + a0[0, 1] * a0[1, 2])
    y = inv * ((1.0 - a0[0, 0]) * a0[1, 2] + a0[1, 0] * a0[0, 2])
    for i in range(n_points):
        r = np.random.rand()
        for k in range(len(cumulative)):  # the last map if rounding leaves r above the sum
            if r < cumulative[k]:
                break
        a, b, e, c, d, f = system[k].ravel()  # as the reference: a view per point
        x, y = a * x + b * y + e, c * x + d * y + f
        coords[i] = x, y
        if not np.isfinite(x) or not np.isfinite(y):
            break
    return coords


@nb.njit(cache=True)
def bounds(coords: np.ndarray) -> np.ndarray:
    """[min x, min y, max x, max y] in one pass."""
    out = np.array([np.inf, np.inf, -np.inf, -np.inf])
    for i in range(coords.shape[0]):
        x = coords[i, 0]
        y = coords[i, 1]
        out[0] = min(out[0], x)
        out[1] = min(out[1], y)
        out[2] = max(out[2], x)
        out[3] = max(out[3], y)
    return out


@nb.njit(cache=True)
def render_graded_patch(
    coords: np.ndarray, size: int, region: np.ndarray, patch: np.ndarray
) -> np.ndarray:
    """Hit counts of each point's 3 x 3 patch subset, divided by the maximum."""
    image = np.zeros((size, size))
    xspan = region[2] - region[0] if region[2] > region[0] else 1.0
    yspan = region[3] - region[1] if region[3] > region[1] else 1.0
    xscale = (size - 1) / xspan
    yscale = (size - 1) / yspan
    for i in range(coords.shape[0]):
        row = int((coords[i, 0] - region[0]) * xscale)
        col = int((coords[i, 1] - region[1]) * yscale)
        for j in range(patch.shape[0]):
            r = row + patch[j, 0] - 1
            c = col + patch[j, 1] - 1
            if 0 <= r < size and 0 <= c < size:
                image[r, c] += 1.0
    peak = image.max()
    if peak > 0:
        image /= peak
    return image


@nb.njit(cache=True)
def hsv8_to_rgb(image: np.ndarray) -> None:
    """8-bit HSV to RGB in place, with OpenCV's 8-bit conventions (hue 0..180 is the circle)."""
    for i in range(image.shape[0]):
        for j in range(image.shape[1]):
            h = image[i, j, 0] * (6.0 / 180.0)
            s = image[i, j, 1] / 255.0
            v = image[i, j, 2] / 255.0
            if h >= 6.0:
                h -= 6.0
            sector = int(math.floor(h))
            f = h - sector
            p = v * (1.0 - s)
            q = v * (1.0 - s * f)
            t = v * (1.0 - s * (1.0 - f))
            if sector == 0:
                r, g, b = v, t, p
            elif sector == 1:
                r, g, b = q, v, p
            elif sector == 2:
                r, g, b = p, v, t
            elif sector == 3:
                r, g, b = p, q, v
            elif sector == 4:
                r, g, b = t, p, v
            else:
                r, g, b = v, p, q
            image[i, j, 0] = min(255, int(r * 255.0 + 0.5))
            image[i, j, 1] = min(255, int(g * 255.0 + 0.5))
            image[i, j, 2] = min(255, int(b * 255.0 + 0.5))


@nb.njit(cache=True)
def colour_fractal(graded: np.ndarray) -> np.ndarray:
    size = graded.shape[0]
    out = np.zeros((size, size, 3), dtype=np.uint8)
    shift = np.random.rand() * 255.0
    sat = np.uint8(np.random.uniform(0.3, 1.0) * 255.0)
    val = np.uint8(np.random.uniform(0.5, 1.0) * 255.0)
    for i in range(size):
        for j in range(size):
            x = graded[i, j]
            if x > 0:
                out[i, j, 0] = np.uint8(np.int64(x * 255.0 + shift) & 255)
                out[i, j, 1] = sat
                out[i, j, 2] = val
    hsv8_to_rgb(out)
    return out


@nb.njit(cache=True)
def diamond_square(n: int, decay: float) -> np.ndarray:
    """A (2**n + 1)-square plasma field, random corners, wrapping neighbours at the borders."""
    side = (1 << n) + 1
    a = np.zeros((side, side))
    a[0, 0] = np.random.rand()
    a[0, side - 1] = np.random.rand()
    a[side - 1, 0] = np.random.rand()
    a[side - 1, side - 1] = np.random.rand()
    for k in range(1, n + 1):
        m = 0.5 * np.exp(decay * (1 - k))
        step = (side - 1) >> k
        cells = 1 << k
        for i in range(0, cells, 2):  # diamond: centres of the squares
            r = (i + 1) * step
            for j in range(0, cells, 2):
                c = (j + 1) * step
                a[r, c] = 0.25 * (
                    a[r - step, c - step]
                    + a[r - step, c + step]
                    + a[r + step, c - step]
                    + a[r + step, c + step]
                ) + np.random.uniform(-m, m)
        for i in range(cells + 1):  # square: the edge midpoints, wrapping at the borders
            r = i * step
            up = r - step if r > 0 else side - 1 - step
            down = r + step if r < side - 1 else step
            for j in range(1 if i % 2 == 0 else 0, cells + 1, 2):
                c = j * step
                left = c - step if c > 0 else side - 1 - step
                right = c + step if c < side - 1 else step
                a[r, c] = 0.25 * (a[up, c] + a[r, left] + a[r, right] + a[down, c])
                a[r, c] += np.random.uniform(-m, m)
    return a


@nb.njit(cache=True)
def colour_plasma(field: np.ndarray, size: int) -> np.ndarray:
    out = np.empty((size, size, 3), dtype=np.uint8)
    hue_scale = np.random.uniform(0.25, 1.0) * 255.0
    hue_shift = np.random.rand() * 255.0
    sat_scale = np.random.uniform(0.1, 0.3) * 255.0
    sat_shift = np.random.uniform(0.4, 0.6) * 255.0
    val_scale = np.random.uniform(0.3, 0.6) * 255.0
    val_shift = np.random.uniform(0.4, 0.6) * 255.0
    for i in range(size):
        for j in range(size):
            x = field[i, j]
            out[i, j, 0] = np.uint8(np.int64(x * hue_scale + hue_shift) & 255)
            out[i, j, 1] = np.uint8(max(0.0, min(x * sat_scale + sat_shift, 255.0)))
            out[i, j, 2] = np.uint8(max(0.0, min(x * val_scale + val_shift, 255.0)))
    hsv8_to_rgb(out)
    return out


@nb.njit(cache=True)
def composite(fg: np.ndarray, bg: np.ndarray) -> np.ndarray:
    for i in range(fg.shape[0]):
        for j in range(fg.shape[1]):
            if fg[i, j, 0] != 0 or fg[i, j, 1] != 0 or fg[i, j, 2] != 0:
                bg[i, j] = fg[i, j]
    return bg


def render_image(
    rng: np.random.Generator, size: int = 256, points: int = 100_000, background: bool = True
) -> np.ndarray:
    """One (size, size, 3) uint8 image the way the reference makes it."""
    system = sample_system(rng)
    coords = iterate(system, points)
    region = bounds(coords)
    chosen = np.flatnonzero(rng.integers(0, 2, 9).astype(bool))
    if chosen.size == 0:
        chosen = np.array([4])
    patch = np.stack(np.divmod(chosen, 3), 1)
    image = colour_fractal(render_graded_patch(coords, size, region, patch))
    if background:
        n = int(math.ceil(math.log2(size)))
        field = diamond_square(n, rng.uniform(0.4, 0.8))[:size, :size]
        image = composite(image, colour_plasma(field, size))
    return image


def warmup() -> None:
    """Compile (or load from the numba cache) every kernel, outside any timing."""
    seed_numba(0)
    rng = np.random.default_rng(0)
    for _ in range(2):
        render_image(rng, 32, 1000)


def run(
    count: int,
    out: Path | None = None,
    size: int = 256,
    points: int = 100_000,
    background: bool = True,
    seed: int = 0,
) -> float:
    """Seconds to render ``count`` images (and save each as ``out/NNNNN.png`` with Pillow's
    defaults when ``out`` is given)."""
    seed_numba(seed)
    rng = np.random.default_rng(seed)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for i in range(count):
        image = render_image(rng, size, points, background)
        if out is not None:
            Image.fromarray(image).save(out / f"{i:05d}.png")
    return time.perf_counter() - start


def main() -> None:
    import tempfile

    warmup()
    with tempfile.TemporaryDirectory() as folder:
        for label, kwargs in (
            ("no background, render only", {"background": False}),
            ("plasma, render only", {}),
            ("plasma, render + Pillow save", {"out": Path(folder)}),
        ):
            seconds = run(300, **kwargs)
            print(f"reference, {label:28s}: {300 / seconds:6.1f} images/s")


if __name__ == "__main__":
    # Import this file under its package name: numba's cache records the module it was
    # compiled in, and ``__main__`` would clash with the name the benchmark imports it by.
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from reference import fractal_renderer

    fractal_renderer.main()
