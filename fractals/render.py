"""The chaos game, fused with rendering: no N x 2 coordinate array is ever stored.

How a system becomes a hit-count grid (all numba, no Python objects in the loops):

1. Map selection table. The selection probabilities are quantised to a 4096-entry ``uint8``
   table (4 KiB, stays in L1): picking a map is one table load indexed by 12 bits of a random
   word, and one 64-bit draw serves four picks. Every map with a non-zero probability keeps at
   least one entry, so quantisation never deletes a map from the attractor.
2. Four interleaved chains. The point sequence of one chain is a serial dependency (each point
   needs the previous one), which leaves the CPU idle most of the time. Four independent chains
   advanced in the same loop iteration overlap their latencies; each starts at the fixed point of
   map 0 (which lies on the attractor, so no burn-in is needed) and together they make exactly
   ``points`` points.
3. Two passes over the same stream. Pass 1 runs the chains and keeps only the bounding box.
   Pass 2 restarts from a copy of the stream state and recomputes bit-identical points (same
   operations, no fast-math), mapping each into the grid. This costs a second iteration but no
   memory traffic, and the window is exactly the bounding box of the points drawn, as in the
   reference. Cells are clamped with NaN-safe comparisons before the integer conversion, and a
   system whose orbit is not finite is reported as empty instead of being drawn.
4. Flips. The random transpose / row flip / column flip of the picture is applied while mapping
   points to cells (a negative scale, swapped strides), so it costs nothing and the colouring
   pass reads the grid sequentially.
5. Patch render. Each point stamps a random non-empty subset of its 3 x 3 neighbourhood, one
   subset per image. Stamping per point is the same as convolving the hit-count grid with the
   subset mask, which is what is done (a few vectorised passes over the grid instead of up to
   nine scattered writes per point). Stamps that would fall outside the image are dropped, as in
   the reference (the count grid has a one-cell zero border).

The output of :func:`render_layer` is a function of (system, stream state, size, points, patch,
flips) only.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from fractals import ifs, rng

SELECT_BITS = 12
SELECT_SIZE = 1 << SELECT_BITS
FILL_GRID = 256  # fill rate is measured on a grid of at most this many cells a side
CENTRE_ONLY = np.int64(1 << 4)  # patch mask of the plain (non-patch) render

_U4 = np.uint64(4)
_U20 = np.uint64(20)
_U36 = np.uint64(36)
_U52 = np.uint64(52)
_M12 = np.uint64(SELECT_SIZE - 1)
_M9 = np.uint64(511)


@nb.njit(cache=True)
def selection_table(probabilities: np.ndarray) -> np.ndarray:
    """Quantise ``probabilities`` to a ``SELECT_SIZE``-entry map-index table.

    Entries are allotted by rounding the cumulative distribution; a map with ``p > 0`` that
    rounds to no entry takes one from the map holding the most, so no map disappears.
    """
    n = probabilities.shape[0]
    counts = np.zeros(n, dtype=np.int64)
    cum = 0.0
    prev = 0
    for k in range(n):
        cum += probabilities[k]
        edge = SELECT_SIZE if k == n - 1 else min(int(cum * SELECT_SIZE + 0.5), SELECT_SIZE)
        counts[k] = max(edge - prev, 0)
        prev = max(prev, edge)
    for k in range(n):
        if probabilities[k] > 0.0 and counts[k] == 0:
            big = 0
            for j in range(n):
                if counts[j] > counts[big]:
                    big = j
            counts[big] -= 1
            counts[k] += 1
    table = np.empty(SELECT_SIZE, dtype=np.uint8)
    pos = 0
    for k in range(n):
        for _ in range(counts[k]):
            table[pos] = k
            pos += 1
    return table


@nb.njit(cache=True)
def _apply(maps: np.ndarray, k: np.uint8, x: float, y: float) -> tuple[float, float]:
    return (
        maps[k, 0] * x + maps[k, 1] * y + maps[k, 2],
        maps[k, 3] * x + maps[k, 4] * y + maps[k, 5],
    )


@nb.njit(cache=True)
def chaos_bounds(
    maps: np.ndarray, table: np.ndarray, state: np.ndarray, points: int, x0: float, y0: float
) -> tuple[float, float, float, float, bool]:
    """Pass 1: run the four chains for ``points`` points in total and return the bounding box
    ``(xmin, xmax, ymin, ymax, finite)``. ``maps`` is the system reshaped to ``(n, 6)``.

    A non-finite value can never return to finite under affine maps (inf and NaN propagate), so
    finite final states plus a finite box prove that every point was finite.
    """
    xa = x0
    ya = y0
    xb = x0
    yb = y0
    xc = x0
    yc = y0
    xd = x0
    yd = y0
    xmin = x0
    xmax = x0
    ymin = y0
    ymax = y0
    for _ in range(points // 4):
        r = rng.next_u64(state)
        xa, ya = _apply(maps, table[(r >> _U4) & _M12], xa, ya)
        xb, yb = _apply(maps, table[(r >> _U20) & _M12], xb, yb)
        xc, yc = _apply(maps, table[(r >> _U36) & _M12], xc, yc)
        xd, yd = _apply(maps, table[r >> _U52], xd, yd)
        xmin = min(xmin, min(min(xa, xb), min(xc, xd)))
        xmax = max(xmax, max(max(xa, xb), max(xc, xd)))
        ymin = min(ymin, min(min(ya, yb), min(yc, yd)))
        ymax = max(ymax, max(max(ya, yb), max(yc, yd)))
    rem = points % 4
    if rem > 0:
        r = rng.next_u64(state)
        xa, ya = _apply(maps, table[(r >> _U4) & _M12], xa, ya)
        xb, yb = _apply(maps, table[(r >> _U20) & _M12], xb, yb)
        xc, yc = _apply(maps, table[(r >> _U36) & _M12], xc, yc)
        xmin = min(xmin, xa)
        xmax = max(xmax, xa)
        ymin = min(ymin, ya)
        ymax = max(ymax, ya)
        if rem > 1:
            xmin = min(xmin, xb)
            xmax = max(xmax, xb)
            ymin = min(ymin, yb)
            ymax = max(ymax, yb)
        if rem > 2:
            xmin = min(xmin, xc)
            xmax = max(xmax, xc)
            ymin = min(ymin, yc)
            ymax = max(ymax, yc)
    finite = True
    for v in (xa, ya, xb, yb, xc, yc, xd, yd, xmin, xmax, ymin, ymax):
        if not math.isfinite(v):
            finite = False
    return xmin, xmax, ymin, ymax, finite


@nb.njit(cache=True)
def _cell(x: float, y: float, xmin: float, ymin: float, sx: float, sy: float, hi: float) -> tuple:
    """Cell ``(y cell, x cell)`` of a point, clamped to ``[0, hi]`` on each axis. Written as
    ``u if u > 0 else 0`` so that a NaN lands on 0 instead of reaching the integer conversion."""
    u = (x - xmin) * sx
    u = u if u > 0.0 else 0.0
    u = u if u < hi else hi
    v = (y - ymin) * sy
    v = v if v > 0.0 else 0.0
    v = v if v < hi else hi
    return np.uint64(int(v)), np.uint64(int(u))


@nb.njit(cache=True)
def _axis_scale(lo: float, hi_: float, size: int, flip: bool) -> tuple[float, float]:
    """Scale and origin mapping ``[lo, hi_]`` onto ``[0, size]`` (``hi_`` to 0 when
    ``flip``). A zero (or denormal) span puts everything on the middle row/column instead of
    dividing by zero."""
    span = hi_ - lo
    s = size / span if span > 0.0 else math.inf
    if not math.isfinite(s):
        return 1.0, lo - size / 2.0
    if flip:
        return -s, hi_
    return s, lo


@nb.njit(cache=True)
def chaos_counts(
    maps: np.ndarray,
    table: np.ndarray,
    state: np.ndarray,
    points: int,
    x0: float,
    y0: float,
    xmin: float,
    xmax: float,
    ymin: float,
    ymax: float,
    orient: int,
    counts: np.ndarray,
) -> None:
    """Pass 2: replay the stream and add one hit per point into ``counts``, a zeroed
    ``(size + 2, size + 2)`` int32 grid whose one-cell border stays empty (it absorbs the patch
    stamps that fall off the image). Each axis is stretched to the box.

    ``orient`` applies the random flips here, where they are free, instead of on the image:
    bit 0 transposes (rows from x instead of y), bit 1 flips the rows, bit 2 the columns. A flip
    measures the axis from its maximum with a negative scale, a transpose swaps the strides.
    """
    size = counts.shape[0] - 2
    stride = np.uint64(counts.shape[1])
    transpose = (orient & 1) != 0
    flip_rows = (orient & 2) != 0
    flip_cols = (orient & 4) != 0
    flip_x = flip_rows if transpose else flip_cols
    flip_y = flip_cols if transpose else flip_rows
    sx, ox = _axis_scale(xmin, xmax, size, flip_x)
    sy, oy = _axis_scale(ymin, ymax, size, flip_y)
    ys = np.uint64(1) if transpose else stride  # flat step per y cell
    xs = stride if transpose else np.uint64(1)  # flat step per x cell
    hi = size - 1.0
    flat = counts.ravel()
    base = stride + np.uint64(1)  # interior origin
    xa = x0
    ya = y0
    xb = x0
    yb = y0
    xc = x0
    yc = y0
    xd = x0
    yd = y0
    for _ in range(points // 4):
        r = rng.next_u64(state)
        xa, ya = _apply(maps, table[(r >> _U4) & _M12], xa, ya)
        xb, yb = _apply(maps, table[(r >> _U20) & _M12], xb, yb)
        xc, yc = _apply(maps, table[(r >> _U36) & _M12], xc, yc)
        xd, yd = _apply(maps, table[r >> _U52], xd, yd)
        i, j = _cell(xa, ya, ox, oy, sx, sy, hi)
        flat[base + i * ys + j * xs] += 1
        i, j = _cell(xb, yb, ox, oy, sx, sy, hi)
        flat[base + i * ys + j * xs] += 1
        i, j = _cell(xc, yc, ox, oy, sx, sy, hi)
        flat[base + i * ys + j * xs] += 1
        i, j = _cell(xd, yd, ox, oy, sx, sy, hi)
        flat[base + i * ys + j * xs] += 1
    rem = points % 4
    if rem > 0:
        r = rng.next_u64(state)
        xa, ya = _apply(maps, table[(r >> _U4) & _M12], xa, ya)
        xb, yb = _apply(maps, table[(r >> _U20) & _M12], xb, yb)
        xc, yc = _apply(maps, table[(r >> _U36) & _M12], xc, yc)
        i, j = _cell(xa, ya, ox, oy, sx, sy, hi)
        flat[base + i * ys + j * xs] += 1
        if rem > 1:
            i, j = _cell(xb, yb, ox, oy, sx, sy, hi)
            flat[base + i * ys + j * xs] += 1
        if rem > 2:
            i, j = _cell(xc, yc, ox, oy, sx, sy, hi)
            flat[base + i * ys + j * xs] += 1


@nb.njit(cache=True)
def patch_mask(state: np.ndarray) -> int:
    """A uniformly random non-empty subset of the 3 x 3 neighbourhood as a 9-bit mask (bit
    ``3 * dr + dc``). The reference draws each cell with probability 1/2 and can draw the empty
    set; redrawing zero makes the subset never empty."""
    m = rng.next_u64(state) & _M9
    while m == 0:
        m = rng.next_u64(state) & _M9
    return np.int64(m)


@nb.njit(cache=True)
def orientation(state: np.ndarray) -> int:
    """Random transpose / row flip / column flip as bits 0 / 1 / 2 of a 3-bit code."""
    return np.int64(rng.next_u64(state) >> np.uint64(61))


@nb.njit(cache=True)
def stamp(counts: np.ndarray, mask: int, out: np.ndarray) -> int:
    """Patch render as a convolution: ``out[r, c]`` (``size x size``) = sum over the offsets
    ``(dr, dc)`` in ``mask`` of the hits of the point that would stamp ``(r, c)``, i.e.
    ``counts[r + 2 - dr, c + 2 - dc]`` in the bordered grid. Returns the maximum, the
    normaliser of the graded render."""
    size = counts.shape[0] - 2
    first = True
    for bit in range(9):
        if (mask >> bit) & 1 == 0:
            continue
        dr = bit // 3
        dc = bit % 3
        for r in range(size):
            src = counts[r + 2 - dr, 2 - dc : 2 - dc + size]
            dst = out[r, :size]
            if first:
                for c in range(size):
                    dst[c] = src[c]
            else:
                for c in range(size):
                    dst[c] += src[c]
        first = False
    mx = 0
    for r in range(size):
        row = out[r, :size]
        for c in range(size):
            mx = max(mx, row[c])
    return mx


@nb.njit(cache=True)
def fill_rate(counts: np.ndarray) -> float:
    """Binary fill rate: the share of lit cells of the point hits (before the patch stamp),
    FractalDB's quality measure. Above ``FILL_GRID`` pixels the hits are pooled onto a
    ``FILL_GRID``-square grid first, so the same threshold works at any output size (100k points
    cannot light 10% of a 1024-px image)."""
    size = counts.shape[0] - 2
    if size <= FILL_GRID:
        lit = 0
        for r in range(size):
            row = counts[r + 1, 1 : size + 1]
            for c in range(size):
                lit += row[c] != 0
        return lit / (size * size)
    g = FILL_GRID
    pooled = np.zeros((g, g), dtype=np.uint8)
    for r in range(size):
        pr = r * g // size
        row = counts[r + 1, 1 : size + 1]
        for c in range(size):
            if row[c] != 0:
                pooled[pr, c * g // size] = 1
    lit = 0
    for r in range(g):
        for c in range(g):
            lit += pooled[r, c]
    return lit / (g * g)


@nb.njit(cache=True, nogil=True)  # releases the GIL: threads can share the work
def render_layer(
    system: np.ndarray,
    key: np.uint64,
    size: int,
    points: int,
    patch: bool,
    flips: bool,
    counts: np.ndarray,
    graded: np.ndarray,
) -> tuple[int, float, int, int]:
    """Render ``system`` from stream state ``key`` at ``size`` px with ``points`` points.

    ``counts`` and ``graded`` are flat int32 workspaces of at least ``(size + 2) ** 2`` and
    ``size ** 2`` elements (flat so that one buffer serves every size and stays contiguous);
    the first ``size ** 2`` elements of ``graded`` receive the (patch-stamped) hit counts as a
    row-major ``size x size`` image. Returns ``(max, fill_rate, patch_mask, orientation)``;
    ``max == 0`` means nothing was drawn (a non-finite orbit).

    Stream order: patch mask, orientation, then the chaos game. The mask and orientation are
    drawn even when ``patch`` / ``flips`` are off, so every option setting iterates the same
    points.
    """
    state = np.empty(1, dtype=np.uint64)
    state[0] = key
    mask = patch_mask(state)
    drawn = orientation(state)
    orient = drawn if flips else 0
    cnt = counts[: (size + 2) * (size + 2)].reshape(size + 2, size + 2)
    cnt[:, :] = 0
    out = graded[: size * size].reshape(size, size)
    n = system.shape[0]
    maps = np.ascontiguousarray(system).reshape(n, 6)
    table = selection_table(ifs.map_probabilities(system))
    x0, y0 = ifs.fixed_point(system, 0)
    replay = state.copy()
    xmin, xmax, ymin, ymax, finite = chaos_bounds(maps, table, state, points, x0, y0)
    if not finite or points <= 0:
        out[:, :] = 0
        return 0, 0.0, mask, orient
    chaos_counts(maps, table, replay, points, x0, y0, xmin, xmax, ymin, ymax, orient, cnt)
    mx = stamp(cnt, mask if patch else CENTRE_ONLY, out)
    return mx, fill_rate(cnt), mask, orient


def render_counts(system: np.ndarray, key: int, size: int, points: int) -> np.ndarray:
    """Python helper (tests, exploration): the raw ``size x size`` hit counts, one per point."""
    system = np.ascontiguousarray(system, dtype=np.float64)
    counts = np.zeros((size + 2) ** 2, dtype=np.int32)
    graded = np.zeros(size * size, dtype=np.int32)
    render_layer(system, np.uint64(key & rng.MASK64), size, points, False, False, counts, graded)
    return graded.reshape(size, size)


def render_graded(
    system: np.ndarray, key: int, size: int, points: int, patch: bool = True, flips: bool = False
) -> tuple[np.ndarray, float]:
    """Python helper: the graded render (counts / max, float64 in [0, 1]) and the fill rate."""
    system = np.ascontiguousarray(system, dtype=np.float64)
    counts = np.zeros((size + 2) ** 2, dtype=np.int32)
    graded = np.zeros(size * size, dtype=np.int32)
    mx, fill, _, _ = render_layer(
        system, np.uint64(key & rng.MASK64), size, points, patch, flips, counts, graded
    )
    graded = graded.reshape(size, size)
    return (graded / mx if mx > 0 else graded.astype(np.float64)), fill
