"""The jitted per-image pipeline: layout, geometry, look, guard, all inside one call.

One image (``make_image(seed, index, options)``) is:

1. Layout. With one fractal per image the fractal fills the frame. With several, fractal ``f``
   gets a square box of ``U(0.3, 0.7) * size`` px centred uniformly in the image (it may hang off
   the edge, as in the reference's multi-fractal generator).
2. Geometry of each fractal. Images ``i`` with the same group ``g = i // instances`` share a
   base system: attempt ``a = 0, 1, ...`` samples a system from stream ``(seed, g, base tag, a)``
   and renders it; the first whose fill rate reaches ``min_fill`` is the base (after
   ``MAX_ATTEMPTS`` the fullest one is used). Instance ``j = i % instances`` > 0 jitters the base
   (one map scaled by U(0.8, 1.1), up to ``MAX_JITTER`` tries, each re-checked for contractivity
   and fill; failing that it falls back to the base). Instance 0 is the base itself. The render
   stream (the system's stream, continued) gives the patch subset, the flips and the points.
3. Look. From stream ``(seed, i, look tag, attempt)``: colour of each fractal, the blur draw,
   then the background. Fractal pixels overwrite the background; blur (if enabled) is applied to
   the composite.
4. Guard. The image is accepted only if enough fractal pixels are visible and the per-channel
   standard deviation of the final image shows it is not near-uniform. Otherwise a new look is
   drawn; after ``MAX_LOOKS`` looks the image gets its own fresh geometry ("rescue", keyed by the
   image index, without jitter). With the default filter this never triggers in practice; it
   exists so that no setting of the options can emit a blank picture.

Every random draw comes from :mod:`fractals.rng` streams keyed by ``(seed, index or group, tag,
attempt)``, so an image depends only on ``(seed, index, options)``: not on batching, workers or
order. It all runs in one nopython call so that a worker thread spends no time in Python (and
holds no GIL) between the first draw and the finished pixels; :mod:`fractals.image` only
prepares buffers and turns the :class:`ImageResult` into a record (:mod:`fractals.record`).

The two results are ``namedtuple`` classes defined here at module level (importable, so they
survive ``cache=True``). ``LayerResult`` stays inside nopython code; ``_generate`` hands its
``ImageResult`` fields back as a plain tuple, since boxing a namedtuple calls into Python
(see its return) and :mod:`fractals.image` names the fields.
"""

from __future__ import annotations

import math
from collections import namedtuple

import numba as nb
import numpy as np

from fractals import background as bg
from fractals import colour, detmath, ifs, render, rng

# Stream tags (the second key of stream_key_nb; the fractal number f is folded in as 16 * f).
TAG_BASE = 1
TAG_JITTER = 2
TAG_LAYOUT = 3
TAG_LOOK = 4
TAG_RESCUE = 5

MAX_ATTEMPTS = 64  # base systems tried per fractal before taking the fullest
MAX_JITTER = 4  # jitter draws per instance before falling back to the base system
MAX_LOOKS = 8  # colour/background draws per geometry before a rescue geometry
MAX_RESCUES = 4
LAYER_MIN = 0.3  # multi-fractal box side, as a share of the image side
LAYER_MAX = 0.7
LAYER_MIN_PX = 8
BLUR_PROBABILITY = 0.5
BLUR_SIGMA = (0.5, 1.0)
GUARD_MIN_STD = 3.0  # per-channel std (0-255 scale) below which an image counts as uniform
GUARD_MIN_LIT = 0.002  # share of pixels that must show fractal colour

# What _geometry chose for one fractal. ``base_attempt`` / ``base_tried``: the accepted base
# attempt and how many base systems were examined; ``jitter_attempt`` / ``jitter_map`` are -1
# (and ``jitter_key`` 0, ``jitter_scale`` 1) when the base system is used as is. ``peak`` is the
# graded render's maximum (0: nothing drawn).
LayerResult = namedtuple(
    "LayerResult",
    [
        "system",
        "base_attempt",
        "base_tried",
        "jitter_attempt",
        "jitter_map",
        "jitter_scale",
        "system_key",
        "jitter_key",
        "render_key",
        "fill",
        "peak",
        "patch_mask",
        "orientation",
    ],
)

# What _generate made, per fractal ``f`` (arrays of length m; ``systems[f, :n_maps[f]]`` and
# ``probabilities[f, :n_maps[f]]`` hold fractal f's maps, ``boxes[f]`` its (cy, cx, fs) or NaN
# when it fills the frame), then per image: the look stream and attempt, the rescue number, the
# blur sigma (0: not blurred) and whether the guard passed.
ImageResult = namedtuple(
    "ImageResult",
    [
        "systems",
        "probabilities",
        "n_maps",
        "boxes",
        "system_keys",
        "base_attempts",
        "base_tried",
        "jitter_keys",
        "jitter_attempts",
        "jitter_maps",
        "jitter_scales",
        "render_keys",
        "patch_masks",
        "orientations",
        "fills",
        "look_key",
        "look_attempt",
        "rescue",
        "blur_sigma",
        "guard_passed",
    ],
)


@nb.njit(cache=True)
def _box(size: int, layered: bool, cy: float, cx: float, fs: float) -> tuple[int, int, int]:
    """``(side, top, left)`` of a fractal's box; the whole frame when not ``layered``."""
    if not layered:
        return size, 0, 0
    side = max(LAYER_MIN_PX, int(math.floor(fs * size + 0.5)))
    top = int(math.floor(cy * size + 0.5)) - side // 2
    left = int(math.floor(cx * size + 0.5)) - side // 2
    return side, top, left


@nb.njit(cache=True)
def _base_key(seed, group, index, f, rescue, attempt) -> np.uint64:
    """Stream of a base system. Normal systems are keyed by the group, so every instance of it
    draws the same base; a rescue system is keyed by the image, so rescuing one image never
    changes its siblings."""
    if rescue == 0:
        return rng.stream_key_nb(seed, group, TAG_BASE + 16 * f, attempt)
    return rng.stream_key_nb(seed, index, TAG_RESCUE + 16 * f, rescue * 1024 + attempt)


@nb.njit(cache=True)
def _draw_system(key: np.uint64) -> tuple[np.ndarray, np.uint64]:
    """System from ``key``; the stream's next state is the render key."""
    state = np.empty(1, dtype=np.uint64)
    state[0] = key
    system = ifs.sample_system(state)
    return system, state[0]


@nb.njit(cache=True)
def _accept(fill: float, min_fill: float) -> bool:
    """The fill filter. ``fill > 0`` as well, so that an empty render (a non-finite orbit) is
    never accepted, even with the filter off (``min_fill == 0``)."""
    return fill > 0.0 and fill >= min_fill


@nb.njit(cache=True)
def _geometry(
    seed,
    group,
    index,
    f,
    instance,
    rescue,
    side,
    points,
    patch,
    flips,
    min_fill,
    base_known,
    base_tried,
    counts,
    graded,
):
    """Choose and render fractal ``f``'s system (see the module docstring, step 2).

    ``base_known`` >= 0 is the accepted base attempt (and ``base_tried`` the number of base
    systems tried) when the caller already knows them from another instance of the group, which
    skips re-rendering rejected systems; the result is the same either way. Leaves the render in
    ``graded`` and returns a :data:`LayerResult`.
    """
    peak = 0
    fill = 0.0
    mask = 0
    orient = 0
    if base_known >= 0:
        attempt = base_known
        tried = base_tried
        skey = _base_key(seed, group, index, f, rescue, attempt)
        system, rkey = _draw_system(skey)
        current = False  # does ``graded`` hold the render of (system, rkey)?
    else:
        best = 0
        best_fill = -1.0
        attempt = 0
        while True:
            skey = _base_key(seed, group, index, f, rescue, attempt)
            system, rkey = _draw_system(skey)
            peak, fill, mask, orient = render.render_layer(
                system, rkey, side, points, patch, flips, counts, graded
            )
            current = True
            if _accept(fill, min_fill):
                tried = attempt + 1
                break
            if fill > best_fill:
                best_fill = fill
                best = attempt
            attempt += 1
            if attempt == MAX_ATTEMPTS:
                # nothing reached min_fill: take the fullest
                tried = MAX_ATTEMPTS
                attempt = best
                skey = _base_key(seed, group, index, f, rescue, attempt)
                system, rkey = _draw_system(skey)
                current = False
                break
    jitter_attempt = -1
    jitter_map = -1
    jitter_scale = 1.0
    jkey = np.uint64(0)
    if instance > 0 and rescue == 0:
        state = np.empty(1, dtype=np.uint64)
        for b in range(MAX_JITTER):
            key = rng.stream_key_nb(seed, group, TAG_JITTER + 16 * f, instance * 1024 + b)
            state[0] = key
            jsys, k, u, ok = ifs.jitter_system(system, state)
            if not ok:
                continue
            jrkey = state[0]
            jpeak, jfill, jmask, jorient = render.render_layer(
                jsys, jrkey, side, points, patch, flips, counts, graded
            )
            current = False
            if _accept(jfill, min_fill):
                system = jsys
                rkey = jrkey
                jkey = key
                peak = jpeak
                fill = jfill
                mask = jmask
                orient = jorient
                jitter_attempt = b
                jitter_map = k
                jitter_scale = u
                current = True
                break
    if not current:
        peak, fill, mask, orient = render.render_layer(
            system, rkey, side, points, patch, flips, counts, graded
        )
    return LayerResult(
        system=system,
        base_attempt=attempt,
        base_tried=tried,
        jitter_attempt=jitter_attempt,
        jitter_map=jitter_map,
        jitter_scale=jitter_scale,
        system_key=skey,
        jitter_key=jkey,
        render_key=rkey,
        fill=fill,
        peak=peak,
        patch_mask=mask,
        orientation=orient,
    )


@nb.njit(cache=True)
def _gaussian_blur(img: np.ndarray, sigma: float, work: np.ndarray) -> None:
    """In-place 3 x 3 Gaussian blur (the reference's kernel size), separable, with
    reflect-101 borders (OpenCV's default). The weight comes from :func:`fractals.detmath.exp`:
    libm's ``exp`` can differ in the last bit between CPUs, and that moves a pixel whose
    blurred value sits on a rounding edge."""
    h = img.shape[0]
    w = img.shape[1]
    side = detmath.exp(-0.5 / (sigma * sigma))
    k1 = side / (1.0 + 2.0 * side)
    k0 = 1.0 / (1.0 + 2.0 * side)
    for i in range(h):
        for j in range(w):
            jl = j - 1 if j > 0 else min(1, w - 1)
            jr = j + 1 if j < w - 1 else max(w - 2, 0)
            for ch in range(3):
                work[i, j, ch] = k0 * img[i, j, ch] + k1 * (
                    np.float32(img[i, jl, ch]) + np.float32(img[i, jr, ch])
                )
    for i in range(h):
        iu = i - 1 if i > 0 else min(1, h - 1)
        idn = i + 1 if i < h - 1 else max(h - 2, 0)
        for j in range(w):
            for ch in range(3):
                v = k0 * work[i, j, ch] + k1 * (work[iu, j, ch] + work[idn, j, ch])
                img[i, j, ch] = np.uint8(min(max(int(v + 0.5), 0), 255))


@nb.njit(cache=True, nogil=True)  # releases the GIL: threads can share the work
def _compose(out, graded, sides, tops, lefts, peaks, look_key, background, blur, work):
    """Background, coloured fractals, optional blur, from look stream ``look_key``.

    Draw order: per fractal (hue shift, saturation, value), then the blur coin and sigma, then
    one word that seeds the background's own stream. The blur draws are made whether or not
    blur is enabled, so the option does not shift the stream. Returns (fractal pixels painted,
    blur sigma or 0).
    """
    m = sides.shape[0]
    state = np.empty(1, dtype=np.uint64)
    state[0] = look_key
    shifts = np.empty(m)
    sats = np.empty(m)
    vals = np.empty(m)
    for f in range(m):
        shifts[f], sats[f], vals[f] = colour.draw_colour(state)
    do_blur = rng.coin(state) and blur
    sigma = rng.uniform_range(state, BLUR_SIGMA[0], BLUR_SIGMA[1])
    bg_state = np.empty(1, dtype=np.uint64)
    bg_state[0] = rng.next_u64(state)
    size = out.shape[0]
    painted = 0
    if background == 0:
        field, field_table, lo, scale = bg.plasma_field(bg_state, size)
        if m == 1 and sides[0] == size and field.shape[0] == size + 1:
            # one full-frame fractal: write every pixel once (same bytes as the general path)
            layer = graded[0, : size * size].reshape(size, size)
            table = colour.hue_table(sats[0], vals[0])
            painted = colour.paint_over_field(
                out, layer, peaks[0], shifts[0], table, field, field_table, lo, scale
            )
            m = 0  # nothing left to paint
        else:
            bg.paint_field(out, field, field_table, lo, scale)
    else:
        bg.black(out)
    for f in range(m):
        s = sides[f]
        layer = graded[f, : s * s].reshape(s, s)
        table = colour.hue_table(sats[f], vals[f])
        painted += colour.paint(out, layer, peaks[f], tops[f], lefts[f], shifts[f], table)
    if do_blur:
        _gaussian_blur(out, sigma, work)
        return painted, sigma
    return painted, 0.0


@nb.njit(cache=True)
def image_ok(img: np.ndarray, painted: int) -> bool:
    """The guard: at least ``GUARD_MIN_LIT`` of the pixels show fractal colour, and some
    channel's standard deviation (over a strided sample of about 64 x 64 pixels) is at least
    ``GUARD_MIN_STD``, i.e. the image is neither blank nor near-uniform."""
    h = img.shape[0]
    w = img.shape[1]
    if painted < max(1, int(GUARD_MIN_LIT * h * w)):
        return False
    sr = max(1, h // 64)
    sc = max(1, w // 64)
    best = 0.0
    for ch in range(3):
        total = 0.0
        total2 = 0.0
        n = 0
        for i in range(0, h, sr):
            for j in range(0, w, sc):
                v = float(img[i, j, ch])
                total += v
                total2 += v * v
                n += 1
        mean = total / n
        best = max(best, total2 / n - mean * mean)
    return best >= GUARD_MIN_STD * GUARD_MIN_STD


@nb.njit(cache=True, nogil=True)  # releases the GIL: threads can share the work
def _generate(
    seed,
    index,
    group,
    instance,
    size,
    points,
    patch,
    background,
    flips,
    blur,
    min_fill,
    base_known,
    base_tried,
    out,
    counts,
    graded,
    work,
):
    """One image into ``out`` (the whole module docstring); returns the fields of an
    :data:`ImageResult` as a plain tuple (see the return), from which
    :func:`fractals.record.build_record` makes the record."""
    m = base_known.shape[0]
    layered = m > 1
    boxes = np.full((m, 3), np.nan)  # (cy, cx, fs) for layered images
    sides = np.empty(m, dtype=np.int64)
    tops = np.empty(m, dtype=np.int64)
    lefts = np.empty(m, dtype=np.int64)
    state = np.empty(1, dtype=np.uint64)
    for f in range(m):
        if layered:
            state[0] = rng.stream_key_nb(seed, group, TAG_LAYOUT, f)
            boxes[f, 0] = rng.uniform(state)
            boxes[f, 1] = rng.uniform(state)
            boxes[f, 2] = rng.uniform_range(state, LAYER_MIN, LAYER_MAX)
        sides[f], tops[f], lefts[f] = _box(size, layered, boxes[f, 0], boxes[f, 1], boxes[f, 2])
    systems = np.zeros((m, ifs.MAX_MAPS, 2, 3))
    probabilities = np.zeros((m, ifs.MAX_MAPS))
    n_maps = np.zeros(m, dtype=np.int64)
    system_keys = np.zeros(m, dtype=np.uint64)
    base_attempts = np.zeros(m, dtype=np.int64)
    tried = np.zeros(m, dtype=np.int64)
    jitter_keys = np.zeros(m, dtype=np.uint64)
    jitter_attempts = np.zeros(m, dtype=np.int64)
    jitter_maps = np.zeros(m, dtype=np.int64)
    jitter_scales = np.zeros(m)
    render_keys = np.zeros(m, dtype=np.uint64)
    patch_masks = np.zeros(m, dtype=np.int64)
    orientations = np.zeros(m, dtype=np.int64)
    fills = np.zeros(m)
    peaks = np.zeros(m, dtype=np.int64)
    look_key = np.uint64(0)
    painted = 0
    sigma = 0.0
    rescue = 0
    look = 0
    ok = False
    for rescue in range(MAX_RESCUES):
        for f in range(m):
            known = base_known[f] if rescue == 0 else -1
            layer = _geometry(
                seed,
                group,
                index,
                f,
                instance,
                rescue,
                sides[f],
                points,
                patch,
                flips,
                min_fill,
                known,
                base_tried[f],
                counts,
                graded[f],
            )
            n = layer.system.shape[0]
            n_maps[f] = n
            systems[f, :n] = layer.system
            probabilities[f, :n] = ifs.map_probabilities(layer.system)
            system_keys[f] = layer.system_key
            base_attempts[f] = layer.base_attempt
            tried[f] = layer.base_tried
            jitter_keys[f] = layer.jitter_key
            jitter_attempts[f] = layer.jitter_attempt
            jitter_maps[f] = layer.jitter_map
            jitter_scales[f] = layer.jitter_scale
            render_keys[f] = layer.render_key
            patch_masks[f] = layer.patch_mask
            orientations[f] = layer.orientation
            fills[f] = layer.fill
            peaks[f] = layer.peak
        for look in range(MAX_LOOKS):
            look_key = rng.stream_key_nb(seed, index, TAG_LOOK, rescue * 1024 + look)
            painted, sigma = _compose(
                out,
                graded,
                sides,
                tops,
                lefts,
                peaks,
                look_key,
                background,
                blur,
                work,
            )
            if image_ok(out, painted):
                ok = True
                break
        if ok:
            break
    # A plain tuple, in ImageResult's field order: boxing a namedtuple makes numba call
    # Python (it unpickles the class), and a Ctrl-C pending at that moment made that call
    # fail and numba then call a NULL class: a segmentation fault. fractals.image names it.
    return (
        systems,
        probabilities,
        n_maps,
        boxes,
        system_keys,
        base_attempts,
        tried,
        jitter_keys,
        jitter_attempts,
        jitter_maps,
        jitter_scales,
        render_keys,
        patch_masks,
        orientations,
        fills,
        look_key,
        look,
        rescue,
        sigma,
        ok,
    )
