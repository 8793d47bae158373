"""Patch-level mixing: mix one random box of the chain image with the same box of a source.

Follows the reference's ``patch_mixing``: ``left = randint(0, W - size)``,
``top = randint(0, H - size)``; with probability 1/2 the box is size x size, otherwise its
width and height are independent ``randint(2, size)`` (anchored at the same left/top, so the box
always lies inside the image). The box of the chain image ``c`` and of the source are mixed with
one pixel rule (mixing.py) in float32 [0, 1], converted back to uint8 by truncation with the
chosen overflow mode and pasted back into ``c``.

Clamp (our addition): the reference raises on a patch larger than the image (``randint`` with a
negative range); we clamp the side to the image per axis, ``sx = min(size, W)``,
``sy = min(size, H)``, so a "square" patch on a non-square image is ``sy x sx`` and the free shape
draws ``width = randint(2, sx)``, ``height = randint(2, sy)``. For the presets at their own size
(CIFAR 32 px with sizes <= 32, ImageNet 224 px with sizes <= 224) the clamp never triggers.

The box is read before it is written and nothing outside it changes, so mixing in place into
``c`` is the same as the reference's crop / mix / paste into a copy.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from fractals.detmath import pow_from_log2, powers32_from_log2
from fractals.rng import UNIFORM_ONE, coin, randint, skip, uniform, uniform_bits_at
from ipmix_cli.augment.pixel_rules import (
    MULTIPLY_BASE_A,
    MULTIPLY_BASE_B,
    MULTIPLY_LOG2,
    OVERFLOW_WRAP,
    RULE_ADD,
    RULE_MULTIPLY,
    RULE_RANDOM_PIXELS,
    U8_TO_UNIT,
    draw_weights,
    truncate_clip,
    truncate_wrap,
)

__all__ = [
    "draw_box",
    "mix_box",
    "OP_FIELDS",
    "OPF_BRANCH",
    "OPF_HEIGHT",
    "OPF_KIND",
    "OPF_LEFT",
    "OPF_LEVEL",
    "OPF_NEGATE",
    "OPF_OP",
    "OPF_Q",
    "OPF_RULE",
    "OPF_SIZE",
    "OPF_SOURCE",
    "OPF_SQUARE",
    "OPF_TOP",
    "OPF_WA",
    "OPF_WB",
    "OPF_WIDTH",
    "patch_mix",
]

# Layout of one operation's trace record (float64[OP_FIELDS]); -1 / NaN where not applicable.
# Image ops fill KIND, OP, LEVEL, NEGATE. Patch ops fill KIND, SIZE, RULE, SOURCE, the box, the
# rule's draws, and OP/LEVEL/NEGATE of the image op that made the source when SOURCE == 1.
OPF_KIND = 0  # 0 image op, 1 patch op
OPF_OP = 1  # image op id (for a patch op: the source's image op, -1 if the source is p)
OPF_LEVEL = 2  # image op level L
OPF_NEGATE = 3  # image op sign coin (0/1)
OPF_SIZE = 4  # patch size as drawn from patch_sizes (before the clamp)
OPF_RULE = 5  # pixel rule id (mixing.RULE_*)
OPF_SOURCE = 6  # 0: the mixing picture p, 1: image_op(x)
OPF_LEFT = 7
OPF_TOP = 8
OPF_SQUARE = 9  # 1: full size box, 0: free width/height
OPF_WIDTH = 10
OPF_HEIGHT = 11
OPF_BRANCH = 12  # draw_weights branch (add/multiply), -1 for random rules
OPF_WA = 13
OPF_WB = 14
OPF_Q = 15  # mask threshold of the random rules
OP_FIELDS = 16


@nb.njit(cache=True, inline="always")
def _memo_power(table: np.ndarray, bases: np.ndarray, v: int, w: float) -> np.float32:
    """``bases[v] ** w`` as float32 from ``table``, computed and kept there on first use (NaN
    marks an entry not computed yet)."""
    p = table[v]
    if p != p:
        p = np.float32(pow_from_log2(bases[v], w, MULTIPLY_LOG2[0, v], MULTIPLY_LOG2[1, v]))
        table[v] = p
    return p


@nb.njit(cache=True)
def patch_mix(
    c: np.ndarray,
    src: np.ndarray,
    size: int,
    rule: int,
    state: np.ndarray,
    beta: float,
    overflow: int,
    rec: np.ndarray,
) -> None:
    """Mix a random box of ``src`` into ``c`` (both uint8 H x W x 3, same shape) in place.

    Draw order: left, top, square coin, [width, height] (:func:`draw_box`), then the rule's
    draws (weights branch, wa, wb for add/multiply; q then one uniform per pixel or element
    for the random rules; :func:`mix_box`). The draws are written to ``rec`` (OPF_* layout)
    so tests can replay them.
    """
    left, top, pw, ph = draw_box(state, c.shape[0], c.shape[1], size, rec)
    mix_box(c, src, left, top, pw, ph, rule, state, beta, overflow, rec)


@nb.njit(cache=True)
def draw_box(state: np.ndarray, H: int, W: int, size: int, rec: np.ndarray) -> tuple:
    """The box of a patch of side ``size`` (clamped to the image) as ``(left, top, width,
    height)``: drawn before its source is made, so a source computed for the box alone
    (an image op of ``x``) sees the same draws as one computed whole."""
    sx = min(size, W)
    sy = min(size, H)
    left = randint(state, 0, W - sx)
    top = randint(state, 0, H - sy)
    if coin(state):
        pw = sx
        ph = sy
        rec[OPF_SQUARE] = 1.0
    else:
        pw = randint(state, min(2, sx), sx)
        ph = randint(state, min(2, sy), sy)
        rec[OPF_SQUARE] = 0.0
    rec[OPF_LEFT] = left
    rec[OPF_TOP] = top
    rec[OPF_WIDTH] = pw
    rec[OPF_HEIGHT] = ph
    return left, top, pw, ph


@nb.njit(cache=True)
def mix_box(
    c: np.ndarray,
    src: np.ndarray,
    left: int,
    top: int,
    pw: int,
    ph: int,
    rule: int,
    state: np.ndarray,
    beta: float,
    overflow: int,
    rec: np.ndarray,
) -> None:
    """Mix the box (left, top, pw, ph) of ``src`` into ``c`` in place with pixel rule
    ``rule``; only that box of ``src`` is read."""
    rec[OPF_RULE] = rule
    wrap = overflow == OVERFLOW_WRAP

    if rule <= RULE_MULTIPLY:  # add (0) or multiply (1)
        wa, wb, branch = draw_weights(state, beta)
        rec[OPF_BRANCH] = branch
        rec[OPF_WA] = wa
        rec[OPF_WB] = wb
        rec[OPF_Q] = np.nan
        # Both rules are f(a) (+ or *) g(b) followed by the same arithmetic, and a, b take only
        # 256 values: tabulate f and g (bit-identical to computing them per element) instead of
        # evaluating them per element.
        ta = np.empty(256, dtype=np.float32)
        tb = np.empty(256, dtype=np.float32)
        if rule == RULE_ADD:
            for v in range(256):
                u2 = U8_TO_UNIT[v] * np.float32(2.0) - np.float32(1.0)
                ta[v] = wa * u2
                tb[v] = wb * u2
            if 3 * pw * ph >= PAIR_TABLE_FROM:
                _map_pairs(c, src, left, top, pw, ph, _pair_table(ta, tb, RULE_ADD, wrap))
                return
            for y in range(top, top + ph):
                crow = c[y]
                srow = src[y]
                for x in range(left, left + pw):
                    for ch in range(3):
                        mixed = (
                            (ta[crow[x, ch]] + tb[srow[x, ch]]) + np.float32(1.0)
                        ) / np.float32(2.0)
                        v255 = mixed * np.float32(255.0)
                        crow[x, ch] = truncate_wrap(v255) if wrap else truncate_clip(v255)
            return
        # Multiply: the powers are detmath's, from the bases' tabulated logarithms (the same bits
        # as multiply_px's pow32, on every CPU). A small box needs fewer powers than the table
        # holds (4 x 4 px: at most 96 of 512), so there each one is computed the first time the
        # box uses its value, NaN marking the others (a power of a non-negative base to a finite
        # weight is never NaN); a larger box fills the whole table first, which keeps the
        # per-element loop free of branches that random values would mispredict.
        wa64 = np.float64(wa)
        wb64 = np.float64(wb)
        if 6 * pw * ph <= 256:
            for v in range(256):
                ta[v] = np.float32(np.nan)
                tb[v] = np.float32(np.nan)
            for y in range(top, top + ph):
                crow = c[y]
                srow = src[y]
                for x in range(left, left + pw):
                    for ch in range(3):
                        fa = _memo_power(ta, MULTIPLY_BASE_A, crow[x, ch], wa64)
                        fb = _memo_power(tb, MULTIPLY_BASE_B, srow[x, ch], wb64)
                        v255 = (fa * fb / np.float32(2.0)) * np.float32(255.0)
                        crow[x, ch] = truncate_wrap(v255) if wrap else truncate_clip(v255)
            return
        powers32_from_log2(MULTIPLY_BASE_A, MULTIPLY_LOG2, wa64, ta)
        powers32_from_log2(MULTIPLY_BASE_B, MULTIPLY_LOG2, wb64, tb)
        if 3 * pw * ph >= PAIR_TABLE_FROM:
            _map_pairs(c, src, left, top, pw, ph, _pair_table(ta, tb, RULE_MULTIPLY, wrap))
            return
        for y in range(top, top + ph):
            crow = c[y]
            srow = src[y]
            for x in range(left, left + pw):
                for ch in range(3):
                    v255 = (ta[crow[x, ch]] * tb[srow[x, ch]] / np.float32(2.0)) * np.float32(255.0)
                    crow[x, ch] = truncate_wrap(v255) if wrap else truncate_clip(v255)
        return

    # Random rules: out is a or b exactly, and float32(v / 255) * 255 truncates back to v for
    # every uint8 v, so "keep a" is "leave c" and "take b" is "copy src" -- no float maths.
    q = uniform(state)
    rec[OPF_BRANCH] = -1.0
    rec[OPF_WA] = np.nan
    rec[OPF_WB] = np.nan
    rec[OPF_Q] = q
    _random_rule_box(c, src, left, top, pw, ph, rule == RULE_RANDOM_PIXELS, q, state)


PAIR_TABLE_FROM = 32768
"""Values in a box from which add and multiply map (a, b) pairs through one 64 KiB table: its
65,536 entries cost ~7 us to fill (they vectorise), then each value is one load instead of two
table loads and the float arithmetic. A 224 px box 131 -> ~70 us; a 64 px box (12,288 values)
would not repay the table."""

_U8 = np.uint64(8)
_U3 = np.uint64(3)


@nb.njit(cache=True)
def _pair_table(ta: np.ndarray, tb: np.ndarray, rule: int, wrap: bool) -> np.ndarray:
    """The uint8 result of rule ``rule`` for every pair (a, b) at ``(a << 8) | b``: the same
    float32 operations, in the same order, as the per-value loops of :func:`mix_box`, so the
    same bytes."""
    table = np.empty(65536, np.uint8)
    one = np.float32(1.0)
    two = np.float32(2.0)
    f255 = np.float32(255.0)
    for a in range(256):
        fa = ta[a]
        row = table[a * 256 : a * 256 + 256]
        if rule == RULE_ADD and wrap:
            for b in range(256):
                row[b] = truncate_wrap((((fa + tb[b]) + one) / two) * f255)
        elif rule == RULE_ADD:
            for b in range(256):
                row[b] = truncate_clip((((fa + tb[b]) + one) / two) * f255)
        elif wrap:
            for b in range(256):
                row[b] = truncate_wrap((fa * tb[b] / two) * f255)
        else:
            for b in range(256):
                row[b] = truncate_clip((fa * tb[b] / two) * f255)
    return table


@nb.njit(cache=True)
def _map_pairs(
    c: np.ndarray, src: np.ndarray, left: int, top: int, pw: int, ph: int, table: np.ndarray
) -> None:
    """``c = table[(c << 8) | src]`` over the box, in place (flat unsigned indices)."""
    cf = c.reshape(-1)
    sf = src.reshape(-1)
    row = np.uint64(3 * c.shape[1])
    n = _U3 * np.uint64(pw)
    for y in range(np.uint64(top), np.uint64(top + ph)):
        first = y * row + _U3 * np.uint64(left)
        for k in range(first, first + n):
            cf[k] = table[(np.uint64(cf[k]) << _U8) | np.uint64(sf[k])]


@nb.njit(cache=True)
def _random_rule_box(
    c: np.ndarray,
    src: np.ndarray,
    left: int,
    top: int,
    pw: int,
    ph: int,
    per_pixel: bool,
    q: float,
    state: np.ndarray,
) -> None:
    """Take ``src``'s value wherever a fresh ``uniform(state) < q`` fails: one draw per pixel
    (all three channels follow it) or per value, row by row, left to right.

    A SplitMix64 stream is a counter (``fractals.rng.uniform_bits_at``), so the draws of a box
    are computed side by side instead of one after another through the state, and
    ``uniform < q`` is the integer test ``bits < q * 2**53`` (both sides exact: q is itself a
    uniform, a multiple of 2**-53). No branch depends on a draw: with q ~ U(0, 1) half of
    them would be mispredicted. Same draws, same bytes and the same final state as the plain loop.
    """
    W = c.shape[1]
    cf = c.reshape(-1)
    sf = src.reshape(-1)
    s0 = state[0]
    limit = np.uint64(q * UNIFORM_ONE)
    drawn = 0
    masks = np.empty(3 * pw, np.uint8)  # per value of a row: 0xFF where src is taken
    for y in range(top, top + ph):
        if per_pixel:
            for i in range(pw):
                take = uniform_bits_at(s0, np.uint64(drawn + i + 1)) >= limit
                mask = np.uint8(0) - np.uint8(take)
                masks[3 * i] = mask
                masks[3 * i + 1] = mask
                masks[3 * i + 2] = mask
            drawn += pw
        else:
            for i in range(3 * pw):
                take = uniform_bits_at(s0, np.uint64(drawn + i + 1)) >= limit
                masks[i] = np.uint8(0) - np.uint8(take)
            drawn += 3 * pw
        base = 3 * (y * W + left)
        crow = cf[base : base + 3 * pw]
        srow = sf[base : base + 3 * pw]
        for i in range(3 * pw):  # a blend, no branch
            a = crow[i]
            crow[i] = a ^ ((a ^ srow[i]) & masks[i])
    skip(state, np.uint64(drawn))
