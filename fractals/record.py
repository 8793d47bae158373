"""The record of an image: what is stored with it, and how an image is redrawn from it.

A record is the JSON-able dict :func:`build_record` makes from the pipeline's
:data:`~fractals.pipeline.ImageResult` (format ``RECORD_FORMAT``, described in
``docs/fractals.md``). It holds the systems and stream keys, enough for :func:`render_record`
to redraw the image byte for byte, or the same picture at another size.

Records come back from files (a bank's manifest, an HDF5 attribute) that may be damaged,
hand-edited or hostile, and their values reach nopython code that does no bounds checking, so
:func:`render_record` validates everything it uses before drawing anything and reports any
problem as one :class:`~fractals.errors.FractalError` line naming the field. It also bounds what
a record may ask for, so that no record can make it allocate or run without limit:

* size (recorded or passed): at most ``MAX_RENDER_SIZE`` = 8192 px a side (about 1 GiB for the
  image and its blur buffer);
* points per fractal (recorded or passed): at most ``MAX_RENDER_POINTS`` = 2**32 (tens of
  seconds per fractal; 8192 px at the default density needs about 10**8);
* fractals x layer-box pixels: at most ``MAX_RENDER_CELLS`` = 2**28 (1 GiB of layer buffers);
* maps per system: at most ``MAX_RECORD_MAPS`` = 255 (the renderer's map table is 8-bit).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from fractals import render
from fractals.errors import FractalError, describe
from fractals.options import BACKGROUNDS, FractalOptions
from fractals.pipeline import ImageResult, _box, _compose

__all__ = [
    "MAX_RECORD_MAPS",
    "MAX_RENDER_CELLS",
    "MAX_RENDER_POINTS",
    "MAX_RENDER_SIZE",
    "RECORD_FORMAT",
    "build_record",
    "render_record",
]

RECORD_FORMAT = "ipmix-fractal/1"

MAX_RENDER_SIZE = 8192
MAX_RENDER_POINTS = 1 << 32
MAX_RENDER_CELLS = 1 << 28
MAX_RECORD_MAPS = 255

_OPTION_NAMES = tuple(f.name for f in dataclasses.fields(FractalOptions))
_HEX_KEY = re.compile(r"[0-9a-fA-F]{16}")


def _hex(key: int) -> str:
    return f"{int(key):016x}"


def build_record(
    seed: int,
    index: int,
    group: int,
    instance: int,
    options: FractalOptions,
    result: ImageResult,
) -> dict[str, Any]:
    """The JSON-able record of one image from what the pipeline returned.

    Only Python ``int``/``float``/``str``/lists go in (never numpy scalars), so that the record
    serialises without a custom encoder and compares equal after a JSON round trip.
    """
    m = result.n_maps.shape[0]
    layers = []
    for f in range(m):
        n = int(result.n_maps[f])
        jittered = int(result.jitter_attempts[f]) >= 0
        layers.append(
            {
                "system": result.systems[f, :n].tolist(),
                "probabilities": result.probabilities[f, :n].tolist(),
                "system_key": _hex(result.system_keys[f]),
                "base_attempt": int(result.base_attempts[f]),
                "base_tried": int(result.base_tried[f]),
                "jitter": (
                    {
                        "key": _hex(result.jitter_keys[f]),
                        "attempt": int(result.jitter_attempts[f]),
                        "map": int(result.jitter_maps[f]),
                        "scale": float(result.jitter_scales[f]),
                    }
                    if jittered
                    else None
                ),
                "render_key": _hex(result.render_keys[f]),
                "patch_mask": int(result.patch_masks[f]),
                "orientation": int(result.orientations[f]),
                "fill": float(result.fills[f]),
                "box": None if m == 1 else result.boxes[f].tolist(),
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
        "look_key": _hex(result.look_key),
        "look_attempt": int(result.look_attempt),
        "rescue": int(result.rescue),
        "blur_sigma": float(result.blur_sigma),
        "fill": min(layer["fill"] for layer in layers),
        "attempts": sum(layer["base_tried"] for layer in layers),
        "guard_passed": bool(result.guard_passed),
    }


# ---------------------------------------------------------------------------------------------
# reading a record back


@dataclasses.dataclass(frozen=True)
class _Layer:
    system: np.ndarray  # (n, 2, 3) float64, finite
    render_key: np.uint64
    box: tuple[float, float, float]  # NaNs for a full-frame fractal


def _is_seq(value: object) -> bool:
    return isinstance(value, (list, tuple))


def _is_number(value: object) -> bool:
    # bool is an int subclass, but true/false where a coefficient belongs is damage, not data
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def _get(mapping: Mapping, key: str, where: str) -> Any:
    if key not in mapping:
        raise FractalError(f"{where}: missing {key!r}")
    return mapping[key]


def _key(mapping: Mapping, key: str, where: str) -> np.uint64:
    value = _get(mapping, key, where)
    if not isinstance(value, str) or _HEX_KEY.fullmatch(value) is None:
        raise FractalError(f"{where}: {key!r} is not a 16-digit hex string (got {describe(value)})")
    return np.uint64(int(value, 16))


def _options(record: Mapping) -> FractalOptions:
    raw = _get(record, "options", "record")
    if not isinstance(raw, Mapping):
        raise FractalError(f"record: 'options' is not a mapping (got {describe(raw)})")
    # every field must be there: a missing one would silently take its default and render a
    # different picture from the one recorded
    for name in _OPTION_NAMES:
        if name not in raw:
            raise FractalError(f"record options: missing {name!r}")
    for name in raw:
        if name not in _OPTION_NAMES:
            raise FractalError(f"record options: unknown option {describe(name)}")
    try:
        return FractalOptions(**raw)
    except FractalError as error:
        raise FractalError(f"record options: {error}") from None


def _system(layer: Mapping, where: str) -> np.ndarray:
    value = _get(layer, "system", where)
    shape = f"{where}: 'system' must be 1 to {MAX_RECORD_MAPS} maps [[a, b, e], [c, d, f]]"
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iuf" or value.ndim != 3 or value.shape[1:] != (2, 3):
            raise FractalError(f"{shape} (got an array of {value.dtype} {value.shape})")
        if not 1 <= value.shape[0] <= MAX_RECORD_MAPS:
            raise FractalError(f"{shape} (got {value.shape[0]} maps)")
        system = np.ascontiguousarray(value, dtype=np.float64)
    else:
        # checked level by level before numpy sees it: np.asarray would turn strings, None or
        # ragged lists into string or object arrays, or accept "1.5" as a number
        if not _is_seq(value):
            raise FractalError(f"{shape} (got {describe(value)})")
        if not 1 <= len(value) <= MAX_RECORD_MAPS:
            raise FractalError(f"{shape} (got {len(value)} maps)")
        for k, affine in enumerate(value):
            if not (_is_seq(affine) and len(affine) == 2 and all(_is_seq(r) for r in affine)):
                raise FractalError(f"{shape} (map {k} is {describe(affine)})")
            if not all(len(row) == 3 for row in affine):
                raise FractalError(f"{shape} (map {k} is {describe(affine)})")
        flat = [x for affine in value for row in affine for x in row]
        for x in flat:
            if not _is_number(x):
                raise FractalError(f"{where}: 'system' holds {describe(x)}, not a number")
        try:
            system = np.array(flat, dtype=np.float64).reshape(len(value), 2, 3)
        except OverflowError:  # a Python int beyond float range
            raise FractalError(f"{where}: 'system' holds a number out of float range") from None
    if not np.isfinite(system).all():
        raise FractalError(f"{where}: 'system' holds NaN or an infinity")
    return system


def _box_of(layer: Mapping, where: str, layered: bool) -> tuple[float, float, float]:
    value = _get(layer, "box", where)
    if not layered:
        if value is not None:
            raise FractalError(f"{where}: 'box' must be null for a one-fractal record")
        return (math.nan, math.nan, math.nan)
    # fractions of the image side; out of [0, 1] the box would index far outside the image
    if not (
        _is_seq(value) and len(value) == 3 and all(_is_number(x) and 0.0 <= x <= 1.0 for x in value)
    ):
        raise FractalError(
            f"{where}: 'box' must be [centre_row, centre_col, side] with each in [0, 1] "
            f"(got {describe(value)})"
        )
    return float(value[0]), float(value[1]), float(value[2])


def _layers(record: Mapping, options: FractalOptions) -> list[_Layer]:
    raw = _get(record, "layers", "record")
    if not _is_seq(raw):
        raise FractalError(f"record: 'layers' is not a list (got {describe(raw)})")
    if len(raw) != options.fractals_per_image:
        raise FractalError(
            f"record: {len(raw)} layers, but options.fractals_per_image is "
            f"{options.fractals_per_image}"
        )
    layered = len(raw) > 1
    layers = []
    for f, layer in enumerate(raw):
        where = f"record layer {f}"
        if not isinstance(layer, Mapping):
            raise FractalError(f"{where} is not a mapping (got {describe(layer)})")
        layers.append(
            _Layer(
                system=_system(layer, where),
                render_key=_key(layer, "render_key", where),
                box=_box_of(layer, where, layered),
            )
        )
    return layers


def _bounded(value: object, name: str, high: int) -> int:
    try:
        valid = not isinstance(value, bool) and int(value) == value and 1 <= value <= high
    except (TypeError, ValueError, OverflowError):
        valid = False
    if not valid:
        raise FractalError(
            f"{name} must be an integer in [1, {high}] to render a record, got {describe(value)}"
        )
    return int(value)


def render_record(
    record: Mapping[str, Any], size: int | None = None, points: int | None = None
) -> np.ndarray:
    """Redraw an image from its record: byte-identical to the original with the recorded size
    and points; at another size (or point count) the same systems, stream keys, colours, layout
    and background at that resolution. No filtering or guard is re-applied.

    Uses ``format``, ``options``, ``look_key`` and each layer's ``system``, ``render_key`` and
    ``box``; other keys are informative and ignored. Any problem with those, or a size, point
    count or layer area beyond the limits in the module docstring, raises
    :class:`~fractals.errors.FractalError` before anything is allocated.
    """
    if not isinstance(record, Mapping):
        raise FractalError(f"a fractal record must be a mapping, got {describe(record)}")
    fmt = record.get("format")
    if not isinstance(fmt, str) or fmt != RECORD_FORMAT:
        found = "no 'format'" if "format" not in record else f"format {describe(fmt)}"
        raise FractalError(f"not a fractal record of format {RECORD_FORMAT!r} ({found})")
    options = _options(record)
    layers = _layers(record, options)
    look_key = _key(record, "look_key", "record")
    size = _bounded(options.size if size is None else size, "size", MAX_RENDER_SIZE)
    points = _bounded(options.points if points is None else points, "points", MAX_RENDER_POINTS)

    m = len(layers)
    layered = m > 1
    sides = np.empty(m, dtype=np.int64)
    tops = np.empty(m, dtype=np.int64)
    lefts = np.empty(m, dtype=np.int64)
    peaks = np.empty(m, dtype=np.int64)
    for f, layer in enumerate(layers):
        sides[f], tops[f], lefts[f] = _box(size, layered, *layer.box)
    grid = int(sides.max())  # a layer box can exceed a tiny image
    if m * grid * grid > MAX_RENDER_CELLS:
        raise FractalError(
            f"record: {m} layers of up to {grid} x {grid} px at size {size} exceed the limit of "
            f"{MAX_RENDER_CELLS} layer pixels"
        )
    try:
        counts = np.zeros((grid + 2) * (grid + 2), dtype=np.int32)
        graded = np.zeros((m, grid * grid), dtype=np.int32)
        out = np.empty((size, size, 3), dtype=np.uint8)
        work = np.empty((size, size, 3), dtype=np.float32)
    except MemoryError:
        raise FractalError(f"not enough memory to render a record at size {size}") from None
    for f, layer in enumerate(layers):
        peaks[f], _, _, _ = render.render_layer(
            layer.system,
            layer.render_key,
            int(sides[f]),
            points,
            options.patch,
            options.flips,
            counts,
            graded[f],
        )
    _compose(
        out,
        graded,
        sides,
        tops,
        lefts,
        peaks,
        look_key,
        BACKGROUNDS.index(options.background),
        options.blur,
        work,
    )
    return out
