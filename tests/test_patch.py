"""Patch mixing: box placement, the clamp, and bit-level replay of the mixed box in numpy."""

from __future__ import annotations

import decimal
import functools
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest

from fractals.rng import new_state
from ipmix_cli.augment.patch import (
    OP_FIELDS,
    OPF_BRANCH,
    OPF_HEIGHT,
    OPF_LEFT,
    OPF_Q,
    OPF_SQUARE,
    OPF_TOP,
    OPF_WA,
    OPF_WB,
    OPF_WIDTH,
    PAIR_TABLE_FROM,
    patch_mix,
)
from ipmix_cli.augment.pixel_rules import (
    OVERFLOW_CLIP,
    OVERFLOW_WRAP,
    RULE_ADD,
    RULE_MULTIPLY,
    RULE_RANDOM_ELEMS,
    RULE_RANDOM_PIXELS,
)

F = np.float32


def np_convert(v: np.ndarray, overflow: int) -> np.ndarray:
    """Reference cast of a float [0, 1] array, written independently in numpy."""
    scaled = v.astype(np.float32) * F(255)
    if overflow == OVERFLOW_CLIP:
        return np.clip(np.nan_to_num(np.trunc(scaled), nan=0.0), 0, 255).astype(np.uint8)
    ok = np.isfinite(scaled) & (np.abs(scaled) < 2.0**31)
    out = np.zeros(scaled.shape, np.uint8)
    out[ok] = (np.trunc(scaled[ok]).astype(np.int64) & 255).astype(np.uint8)
    return out


_CTX = decimal.Context(prec=34, Emin=-99999, Emax=99999)


@functools.cache
def _exact_pow32(x: float, y: float) -> np.float32:
    """The float32 nearest to the exact ``x ** y`` (ties to even), from 34-digit decimal
    arithmetic: no libm, no numpy SIMD path (numpy's float32 ``**`` differs by CPU; on AVX-512
    it is 1 ulp off for some inputs, and the wrap rule turns one ulp of a huge value into tens
    of grey levels)."""
    if y == 0:
        return np.float32(1.0)
    if x == 0:
        return np.float32(0.0 if y > 0 else np.inf)
    exact = _CTX.exp(_CTX.multiply(Decimal(y), _CTX.ln(Decimal(x))))
    with np.errstate(over="ignore"):
        f = np.float32(float(exact))
    if not np.isfinite(f):
        return f
    candidates = [np.nextafter(f, np.float32(-np.inf)), f, np.nextafter(f, np.float32(np.inf))]
    target = Fraction(exact)
    return min(
        candidates, key=lambda c: (abs(Fraction(float(c)) - target), int(c.view(np.int32)) & 1)
    )


def pow32(x: np.ndarray, y: np.float32) -> np.ndarray:
    """Correctly rounded float32 ``x ** y``, element by element (:func:`_exact_pow32`)."""
    flat = [_exact_pow32(float(v), float(y)) for v in x.ravel()]
    return np.array(flat, dtype=np.float32).reshape(x.shape)


def np_patch_replay(c: np.ndarray, src: np.ndarray, rule: int, rec: np.ndarray, overflow: int):
    """Expected output of an add/multiply patch op given its recorded draws."""
    left, top = int(rec[OPF_LEFT]), int(rec[OPF_TOP])
    w, h = int(rec[OPF_WIDTH]), int(rec[OPF_HEIGHT])
    a = c[top : top + h, left : left + w].astype(np.float32) / F(255)
    b = src[top : top + h, left : left + w].astype(np.float32) / F(255)
    wa, wb = F(rec[OPF_WA]), F(rec[OPF_WB])
    if rule == RULE_ADD:
        mixed = ((wa * (a * F(2) - F(1)) + wb * (b * F(2) - F(1))) + F(1)) / F(2)
    else:
        with np.errstate(over="ignore"):
            mixed = (pow32(a * F(2), wa) * pow32(np.maximum(b * F(2), F(1e-37)), wb)) / F(2)
    out = c.copy()
    out[top : top + h, left : left + w] = np_convert(mixed, overflow)
    return out


def _images(seed: int, H: int = 32, W: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, (H, W, 3), dtype=np.uint8),
        rng.integers(0, 256, (H, W, 3), dtype=np.uint8),
    )


@pytest.mark.parametrize("rule", [RULE_ADD, RULE_MULTIPLY])
@pytest.mark.parametrize("overflow", [OVERFLOW_WRAP, OVERFLOW_CLIP])
def test_add_multiply_patch_replays_in_numpy(rule: int, overflow: int) -> None:
    state = new_state(21, rule, overflow)
    branches = set()
    wrapped = 0
    for trial in range(60):
        c, src = _images(trial)
        before = c.copy()
        rec = np.full(OP_FIELDS, np.nan)
        size = 4 if trial % 3 == 0 else 16  # multiply: small boxes take their powers one by one
        patch_mix(c, src, size, rule, state, 3.0, overflow, rec)
        branches.add(int(rec[OPF_BRANCH]))
        expected = np_patch_replay(before, src, rule, rec, overflow)
        # the same float32 expression, with detmath's pow32 correctly rounded here: identical
        # bytes (it could differ only where an exact power lies within a double ulp of a
        # float32 midpoint, one power in 2**28, and none of these does)
        assert np.array_equal(c, expected), trial
        if overflow == OVERFLOW_WRAP:
            box = (slice(int(rec[OPF_TOP]), int(rec[OPF_TOP] + rec[OPF_HEIGHT])),
                   slice(int(rec[OPF_LEFT]), int(rec[OPF_LEFT] + rec[OPF_WIDTH])))  # fmt: skip
            a = before[box].astype(np.float32) / 255
            if rule == RULE_ADD:
                wa, wb = rec[OPF_WA], rec[OPF_WB]
                raw = ((wa * (2 * a - 1) + wb * (2 * src[box] / 255 - 1)) + 1) / 2
                wrapped += int(((raw < 0) | (raw >= 256 / 255)).sum())
    assert branches == {0, 1}
    if rule == RULE_ADD and overflow == OVERFLOW_WRAP:
        assert wrapped > 0  # the wrap actually happened somewhere in these trials


@pytest.mark.parametrize("rule", [RULE_ADD, RULE_MULTIPLY])
@pytest.mark.parametrize("overflow", [OVERFLOW_WRAP, OVERFLOW_CLIP])
def test_large_boxes_through_the_pair_table_replay_in_numpy(rule: int, overflow: int) -> None:
    """224 px patches: boxes of PAIR_TABLE_FROM values or more map (a, b) pairs through one
    table, smaller ones compute per value; both give numpy's replay of the float32 rule."""
    state = new_state(22, rule, overflow)
    tabled = 0
    for trial in range(16):
        c, src = _images(100 + trial, 224, 224)
        before = c.copy()
        rec = np.full(OP_FIELDS, np.nan)
        patch_mix(c, src, 224, rule, state, 3.0, overflow, rec)
        tabled += 3 * int(rec[OPF_WIDTH]) * int(rec[OPF_HEIGHT]) >= PAIR_TABLE_FROM
        assert np.array_equal(c, np_patch_replay(before, src, rule, rec, overflow)), trial
    assert 4 <= tabled <= 14  # both paths ran


@pytest.mark.parametrize("rule", [RULE_RANDOM_PIXELS, RULE_RANDOM_ELEMS])
def test_random_rules_take_each_value_from_c_or_src(rule: int) -> None:
    state = new_state(22, rule)
    for trial in range(30):
        c = np.zeros((32, 32, 3), np.uint8)  # disjoint values: the origin of a value is visible
        src = np.full((32, 32, 3), 200, np.uint8)
        rec = np.full(OP_FIELDS, np.nan)
        patch_mix(c, src, 32, rule, state, 3.0, OVERFLOW_WRAP, rec)
        left, top = int(rec[OPF_LEFT]), int(rec[OPF_TOP])
        w, h = int(rec[OPF_WIDTH]), int(rec[OPF_HEIGHT])
        inside = np.zeros((32, 32), bool)
        inside[top : top + h, left : left + w] = True
        assert np.all(c[~inside] == 0)
        assert np.all((c[inside] == 0) | (c[inside] == 200))
        took = c[inside] == 200
        if rule == RULE_RANDOM_PIXELS:
            assert np.all(took.all(axis=1) | (~took).all(axis=1)), trial
        q = rec[OPF_Q]
        assert 0 <= q < 1 and np.isnan(rec[OPF_WA]) and rec[OPF_BRANCH] == -1
        n = took.size
        assert abs((~took).mean() - q) < 6 * np.sqrt(q * (1 - q) / n) + 2 / n


def splitmix_uniforms(s0: int, n: int) -> tuple[list[float], int]:
    """``n`` uniforms of a SplitMix64 stream from state ``s0``, one by one in Python integers
    (independent of fractals.rng's kernels), and the state after them."""
    mask, out, s = (1 << 64) - 1, [], s0
    for _ in range(n):
        s = (s + 0x9E3779B97F4A7C15) & mask
        z = ((s ^ (s >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append(((z ^ (z >> 31)) >> 11) / 2.0**53)
    return out, s


@pytest.mark.parametrize("rule", [RULE_RANDOM_PIXELS, RULE_RANDOM_ELEMS])
def test_random_rules_replay_one_draw_at_a_time(rule: int) -> None:
    """Every value of the box against draws made one by one in row order (per pixel or per
    value), ``uniform < q`` keeping c; and the stream left exactly after those draws, which
    the recipe's next draws depend on."""
    state = new_state(25, rule)
    for trial in range(12):
        c = np.random.default_rng(trial).integers(0, 100, (40, 36, 3), dtype=np.uint8)
        src = c + 100
        before, s0 = c.copy(), int(state[0])
        rec = np.full(OP_FIELDS, np.nan)
        patch_mix(c, src, 32, rule, state, 3.0, OVERFLOW_WRAP, rec)
        left, top = int(rec[OPF_LEFT]), int(rec[OPF_TOP])
        w, h = int(rec[OPF_WIDTH]), int(rec[OPF_HEIGHT])
        head = 3 + (0 if rec[OPF_SQUARE] == 1 else 2)  # left, top, coin, [width, height]
        per_value = h * w * (1 if rule == RULE_RANDOM_PIXELS else 3)
        draws, s_end = splitmix_uniforms(s0, head + 1 + per_value)
        q = draws[head]
        assert rec[OPF_Q] == q
        keep = np.array(draws[head + 1 :]) < q
        keep = keep.reshape(h, w, 1) if rule == RULE_RANDOM_PIXELS else keep.reshape(h, w, 3)
        box = (slice(top, top + h), slice(left, left + w))
        want = before.copy()
        want[box] = np.where(keep, before[box], src[box])
        np.testing.assert_array_equal(c, want)
        assert int(state[0]) == s_end, trial


def test_box_stays_inside_and_outside_is_untouched() -> None:
    state = new_state(23)
    for trial in range(200):
        c, src = _images(100 + trial, 24, 40)
        before = c.copy()
        size = [4, 8, 16, 32, 64, 224][trial % 6]
        rec = np.full(OP_FIELDS, np.nan)
        patch_mix(c, src, size, trial % 4, state, 4.0, OVERFLOW_WRAP, rec)
        left, top = int(rec[OPF_LEFT]), int(rec[OPF_TOP])
        w, h = int(rec[OPF_WIDTH]), int(rec[OPF_HEIGHT])
        sx, sy = min(size, 40), min(size, 24)  # the documented clamp
        assert 0 <= left <= 40 - sx and 0 <= top <= 24 - sy
        if rec[OPF_SQUARE] == 1:
            assert (w, h) == (sx, sy)
        else:
            assert 2 <= w <= sx and 2 <= h <= sy
        outside = np.ones((24, 40), bool)
        outside[top : top + h, left : left + w] = False
        assert np.array_equal(c[outside], before[outside])


def test_patch_equal_to_image_is_whole_image() -> None:
    c, src = _images(5)
    rec = np.full(OP_FIELDS, np.nan)
    state = new_state(24)
    while True:  # draw until the square branch comes up
        cc = c.copy()
        patch_mix(cc, src, 32, RULE_RANDOM_ELEMS, state, 3.0, OVERFLOW_WRAP, rec)
        if rec[OPF_SQUARE] == 1:
            break
    assert (rec[OPF_LEFT], rec[OPF_TOP], rec[OPF_WIDTH], rec[OPF_HEIGHT]) == (0, 0, 32, 32)


def test_same_state_same_result() -> None:
    c, src = _images(6)
    c1, c2 = c.copy(), c.copy()
    r = np.full(OP_FIELDS, np.nan)
    patch_mix(c1, src, 16, RULE_ADD, new_state(9, 9), 3.0, OVERFLOW_WRAP, r)
    patch_mix(c2, src, 16, RULE_ADD, new_state(9, 9), 3.0, OVERFLOW_WRAP, r)
    assert np.array_equal(c1, c2) and not np.array_equal(c1, c)
