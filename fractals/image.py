"""Making images from Python: ``make_image``, ``make_images`` and ``warmup``.

The pixels are made in one jitted call (:mod:`fractals.pipeline`); what stays here is what that
call cannot do for itself: validating the caller's arguments, keeping per-thread scratch buffers
so that the hot path never allocates, remembering each group's accepted base systems so that
the other instances of a group skip the rejected ones, and turning the result into a record
(:mod:`fractals.record`).
"""

from __future__ import annotations

import operator
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from fractals import ifs, render, rng
from fractals.deferred_interrupt import interrupts_deferred
from fractals.errors import FractalError, describe
from fractals.options import BACKGROUNDS, FractalOptions
from fractals.pipeline import ImageResult, _generate
from fractals.record import build_record, render_record

__all__ = ["make_image", "make_images", "warmup"]

_BASE_CACHE_SIZE = 4096
MAX_INDEX = 1 << 53  # indices are also exact in float64, i.e. in any JSON reader

_local = threading.local()
# (seed, group, options) -> (accepted base attempt, base systems tried), one entry per fractal
_base_cache: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()
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


def _check_seed(seed: int) -> int:
    # operator.index: numpy integers become Python ints (whose ``& MASK64`` cannot overflow);
    # a float seed is refused rather than truncated into another bank
    try:
        return operator.index(seed)
    except TypeError:
        raise FractalError(f"seed must be an integer, got {describe(seed)}") from None


def _check_index(index: int) -> int:
    try:
        valid = not isinstance(index, bool) and int(index) == index and 0 <= index < MAX_INDEX
    except (TypeError, ValueError, OverflowError):
        valid = False
    if not valid:
        raise FractalError(f"index must be an integer in [0, 2**53), got {describe(index)}")
    return int(index)


def _make_into(seed: int, index: int, options: FractalOptions, out: np.ndarray) -> dict:
    seed = _check_seed(seed)
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
    with interrupts_deferred():  # see there: a Ctrl-C inside the kernel crashed numba
        fields = _generate(
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
    result = ImageResult._make(fields)
    # a rescued image's systems are its own, not the group's: never share them
    if options.instances > 1 and result.rescue == 0:
        with _base_lock:
            _base_cache[ckey] = (result.base_attempts.copy(), result.base_tried.copy())
            _base_cache.move_to_end(ckey)
            while len(_base_cache) > _BASE_CACHE_SIZE:
                _base_cache.popitem(last=False)
    return build_record(seed, index, group, instance, options, result)


def make_image(seed: int, index: int, options: FractalOptions) -> tuple[np.ndarray, dict]:
    """Image ``index`` of the bank defined by ``seed`` and ``options``.

    Returns a ``(size, size, 3)`` uint8 RGB array and a JSON-serialisable record (systems as
    nested float lists, probabilities, stream keys as 16-digit hex strings, fill rates, attempt
    counts, layout) from which :func:`~fractals.record.render_record` redraws the image. A seed
    or index of the wrong type or out of range raises :class:`~fractals.errors.FractalError`.
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
