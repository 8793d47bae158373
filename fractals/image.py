"""The per-image pipeline and the public API: options, image generation, records, warm-up.

One image (``make_image(seed, index, options)``) is, all inside one jitted call:

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
order. The record returned with each image holds the systems and stream keys, enough for
:func:`render_record` to redraw it byte for byte, or at another size.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numba as nb
import numpy as np

from fractals import background as bg
from fractals import colour, ifs, render, rng

RECORD_FORMAT = "ipmix-fractal/1"

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
DEFAULT_MIN_FILL = 0.05

BACKGROUNDS = ("plasma", "black")
_BASE_CACHE_SIZE = 4096


@dataclass(frozen=True)
class FractalOptions:
    """How images are made. Every field changes the output bytes; all are recorded.

    ``min_fill`` defaults to 0.05: the SVD sampler's fill rate has a median near 0.2 at 256 px
    with a tail down to about 0.03, and the systems in that tail are the dots and thin curves that
    make poor mixing pictures. 0.05 removes that tail (the reference's own search cut-off) while
    rejecting only a few percent of systems, so the filter costs little time and does not bias
    the bank toward blobs the way FractalDB's 0.2 would.
    """

    size: int = 256
    points: int = 100_000
    background: str = "plasma"
    patch: bool = True
    fractals_per_image: int = 1
    instances: int = 1
    blur: bool = False
    flips: bool = True
    min_fill: float = DEFAULT_MIN_FILL

    def __post_init__(self) -> None:
        def integer(name: str, low: int, high: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or not low <= value < high:
                raise ValueError(f"{name} must be an integer in [{low}, {high}), got {value!r}")
            object.__setattr__(self, name, int(value))  # plain int: JSON-safe, hash-stable

        def flag(name: str) -> None:
            value = getattr(self, name)
            if value not in (True, False):
                raise ValueError(f"{name} must be a boolean, got {value!r}")
            object.__setattr__(self, name, bool(value))

        integer("size", 8, 1 << 16)
        integer("points", 1, 1 << 40)
        integer("fractals_per_image", 1, 1 << 10)
        integer("instances", 1, 1 << 40)  # instance numbers are packed into stream keys
        for name in ("patch", "blur", "flips"):
            flag(name)
        if self.background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {BACKGROUNDS}, got {self.background!r}")
        min_fill = float(self.min_fill)
        if not 0.0 <= min_fill <= 1.0:
            raise ValueError(f"min_fill must be in [0, 1], got {self.min_fill!r}")
        object.__setattr__(self, "min_fill", min_fill)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable; ``FractalOptions(**d)`` round-trips. (A comprehension rather than
        ``dataclasses.asdict``, which deep-copies and costs ~10 us on every record.)"""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


# ---------------------------------------------------------------------------------------------
# jitted pipeline


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
    ``graded``. Returns (system, base_attempt, base_tried, jitter_attempt, jitter_map,
    jitter_scale, system_key, jitter_key, render_key, fill, peak, mask, orientation).
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
    return (
        system,
        attempt,
        tried,
        jitter_attempt,
        jitter_map,
        jitter_scale,
        skey,
        jkey,
        rkey,
        fill,
        peak,
        mask,
        orient,
    )


@nb.njit(cache=True)
def _gaussian_blur(img: np.ndarray, sigma: float, work: np.ndarray) -> None:
    """In-place 3 x 3 Gaussian blur (the reference's kernel size), separable, with
    reflect-101 borders (OpenCV's default)."""
    h = img.shape[0]
    w = img.shape[1]
    side = math.exp(-0.5 / (sigma * sigma))
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
    """One image into ``out``; returns its metadata arrays (see ``_record``)."""
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
    nmaps = np.zeros(m, dtype=np.int64)
    # base attempt, jitter attempt, jitter map, patch mask, base systems tried, orientation
    ints = np.zeros((m, 6), dtype=np.int64)
    floats = np.zeros((m, 2))  # fill, jitter scale
    keys = np.zeros((m, 3), dtype=np.uint64)  # system, jitter, render
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
            (
                system,
                attempt,
                tried,
                jattempt,
                jmap,
                jscale,
                skey,
                jkey,
                rkey,
                fill,
                peak,
                mask,
                orient,
            ) = _geometry(
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
            n = system.shape[0]
            nmaps[f] = n
            systems[f, :n] = system
            probabilities[f, :n] = ifs.map_probabilities(system)
            ints[f, 0] = attempt
            ints[f, 1] = jattempt
            ints[f, 2] = jmap
            ints[f, 3] = mask
            ints[f, 4] = tried
            ints[f, 5] = orient
            floats[f, 0] = fill
            floats[f, 1] = jscale
            keys[f, 0] = skey
            keys[f, 1] = jkey
            keys[f, 2] = rkey
            peaks[f] = peak
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
    return (
        systems,
        probabilities,
        nmaps,
        ints,
        floats,
        keys,
        boxes,
        look_key,
        rescue,
        look,
        sigma,
        ok,
    )


# ---------------------------------------------------------------------------------------------
# Python side: workspaces, base-system cache, records

_local = threading.local()
_base_cache: OrderedDict[tuple, int] = OrderedDict()
_base_lock = threading.Lock()


def _workspace(size: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-thread scratch buffers, reused across images so that no per-image allocation or page
    faulting happens in the hot path."""
    ws = getattr(_local, "ws", None)
    if ws is None or ws[0] != (size, m):
        ws = (
            (size, m),
            np.zeros((size + 2) * (size + 2), dtype=np.int32),
            np.zeros((m, size * size), dtype=np.int32),
            np.zeros((size, size, 3), dtype=np.float32),
        )
        _local.ws = ws
    return ws[1], ws[2], ws[3]


def _base_cache_key(seed: int, group: int, options: FractalOptions) -> tuple:
    # every option is part of the key: a base's acceptance depends on size, points, min_fill,
    # the layout, and (through fill pooling at odd sizes) even the orientation
    return (seed & rng.MASK64, group, options)


def _hex(key: int) -> str:
    return f"{int(key):016x}"


def _check_index(index: int) -> int:
    if int(index) != index or index < 0 or index >= 1 << 53:
        raise ValueError(f"index must be an integer in [0, 2**53), got {index!r}")
    return int(index)


def _make_into(seed: int, index: int, options: FractalOptions, out: np.ndarray) -> dict:
    index = _check_index(index)
    group, instance = divmod(index, options.instances)
    m = options.fractals_per_image
    counts, graded, work = _workspace(options.size, m)
    ckey = _base_cache_key(seed, group, options)
    base_known = np.full(m, -1, dtype=np.int64)
    base_tried = np.zeros(m, dtype=np.int64)
    if options.instances > 1:
        with _base_lock:
            cached = _base_cache.get(ckey)
        if cached is not None:
            base_known[:] = cached[0]
            base_tried[:] = cached[1]
    res = _generate(
        np.uint64(seed & rng.MASK64),
        index,
        group,
        instance,
        options.size,
        options.points,
        options.patch,
        BACKGROUNDS.index(options.background),
        options.flips,
        options.blur,
        float(options.min_fill),
        base_known,
        base_tried,
        out,
        counts,
        graded,
        work,
    )
    ints, rescue = res[3], res[8]  # see _generate's return tuple
    if options.instances > 1 and rescue == 0:
        with _base_lock:
            _base_cache[ckey] = (ints[:, 0].copy(), ints[:, 4].copy())
            _base_cache.move_to_end(ckey)
            while len(_base_cache) > _BASE_CACHE_SIZE:
                _base_cache.popitem(last=False)
    return _record(seed, index, group, instance, options, res)


def _record(seed: int, index: int, group: int, instance: int, options, res) -> dict:
    (
        systems,
        probabilities,
        nmaps,
        ints,
        floats,
        keys,
        boxes,
        look_key,
        rescue,
        look,
        sigma,
        ok,
    ) = res
    layers = []
    for f in range(nmaps.shape[0]):
        n = int(nmaps[f])
        system = systems[f, :n]
        jittered = int(ints[f, 1]) >= 0
        layers.append(
            {
                "system": system.tolist(),
                "probabilities": probabilities[f, :n].tolist(),
                "system_key": _hex(keys[f, 0]),
                "base_attempt": int(ints[f, 0]),
                "base_tried": int(ints[f, 4]),
                "jitter": (
                    {
                        "key": _hex(keys[f, 1]),
                        "attempt": int(ints[f, 1]),
                        "map": int(ints[f, 2]),
                        "scale": float(floats[f, 1]),
                    }
                    if jittered
                    else None
                ),
                "render_key": _hex(keys[f, 2]),
                "patch_mask": int(ints[f, 3]),
                "orientation": int(ints[f, 5]),
                "fill": float(floats[f, 0]),
                "box": None if nmaps.shape[0] == 1 else boxes[f].tolist(),
            }
        )
    return {
        "format": RECORD_FORMAT,
        "seed": int(seed),
        "index": int(index),
        "group": int(group),
        "instance": int(instance),
        "options": options.to_dict(),
        "layers": layers,
        "look_key": _hex(look_key),
        "look_attempt": int(look),
        "rescue": int(rescue),
        "blur_sigma": float(sigma),
        "fill": min(layer["fill"] for layer in layers),
        "attempts": sum(layer["base_tried"] for layer in layers),
        "guard_passed": bool(ok),
    }


def make_image(seed: int, index: int, options: FractalOptions) -> tuple[np.ndarray, dict]:
    """Image ``index`` of the bank defined by ``seed`` and ``options``.

    Returns a ``(size, size, 3)`` uint8 RGB array and a JSON-serialisable record (systems as
    nested float lists, probabilities, stream keys as 16-digit hex strings, fill rates, attempt
    counts, layout) from which :func:`render_record` redraws the image.
    """
    out = np.empty((options.size, options.size, 3), dtype=np.uint8)
    record = _make_into(seed, index, options, out)
    return out, record


def make_images(
    seed: int, indices: Sequence[int], options: FractalOptions
) -> tuple[np.ndarray, list[dict]]:
    """Images for ``indices`` as one ``(n, size, size, 3)`` uint8 array (byte-identical to
    :func:`make_image` per index) and their records. Writes straight into the batch array and
    reuses scratch buffers and the group's accepted base systems across the batch, so contiguous
    blocks (what a worker should be given) are the cheapest."""
    indices = list(indices)
    out = np.empty((len(indices), options.size, options.size, 3), dtype=np.uint8)
    records = [_make_into(seed, index, options, out[k]) for k, index in enumerate(indices)]
    return out, records


def render_record(record: dict, size: int | None = None, points: int | None = None) -> np.ndarray:
    """Redraw an image from its record: byte-identical to the original with the recorded size
    and points; at another size (or point count) the same systems, stream keys, colours, layout
    and background at that resolution. No filtering or guard is re-applied."""
    if record.get("format") != RECORD_FORMAT:
        raise ValueError(f"not a fractal record of format {RECORD_FORMAT!r}")
    options = FractalOptions(**record["options"])
    size = options.size if size is None else int(size)
    points = options.points if points is None else int(points)
    if size < 1 or points < 1:
        raise ValueError("size and points must be positive")
    layers = record["layers"]
    m = len(layers)
    layered = m > 1
    sides = np.empty(m, dtype=np.int64)
    tops = np.empty(m, dtype=np.int64)
    lefts = np.empty(m, dtype=np.int64)
    peaks = np.empty(m, dtype=np.int64)
    for f, layer in enumerate(layers):
        box = layer["box"] if layered else (math.nan, math.nan, math.nan)
        sides[f], tops[f], lefts[f] = _box(size, layered, box[0], box[1], box[2])
    grid = int(sides.max())  # a layer box can exceed a tiny image
    counts = np.zeros((grid + 2) * (grid + 2), dtype=np.int32)
    graded = np.zeros((m, grid * grid), dtype=np.int32)
    for f, layer in enumerate(layers):
        system = np.asarray(layer["system"], dtype=np.float64)
        if system.ndim != 3 or system.shape[1:] != (2, 3) or not 1 <= len(system) <= 255:
            raise ValueError("a layer's system must be an (n, 2, 3) array with 1 <= n <= 255")
        peaks[f], _, _, _ = render.render_layer(
            system,
            np.uint64(int(layer["render_key"], 16)),
            int(sides[f]),
            points,
            options.patch,
            options.flips,
            counts,
            graded[f],
        )
    out = np.empty((size, size, 3), dtype=np.uint8)
    work = np.empty((size, size, 3), dtype=np.float32)
    _compose(
        out,
        graded,
        sides,
        tops,
        lefts,
        peaks,
        np.uint64(int(record["look_key"], 16)),
        BACKGROUNDS.index(options.background),
        options.blur,
        work,
    )
    return out


def warmup() -> None:
    """Compile (or load from numba's cache) every jitted function by making tiny images with
    every option branch, so that workers and benchmarks do not pay compilation inside timed or
    latency-sensitive code."""
    tiny = dict(size=16, points=64, min_fill=0.0)
    for opts in (
        FractalOptions(**tiny),
        FractalOptions(**tiny, background="black", patch=False, blur=True, flips=False),
        FractalOptions(**tiny, fractals_per_image=2, instances=2, blur=True),
    ):
        for index in range(2):
            _, record = make_image(0, index, opts)
        render_record(record, size=20, points=50)
    render.render_counts(ifs.sample_system_from_key(0), 0, 300, 10)  # pooled fill branch
