"""The IPMix recipe as one jitted kernel that loops over a batch.

Per sample the kernel does everything after decoding: pre-transform (or just the flip, when
the ImageNet RandomResizedCrop already ran in Pillow), mixing-picture choice and crop, then one
or two IPMix views. No Python runs per sample, scratch buffers are allocated once per batch,
and all mixing maths is float32.

Streams (fractals.rng): stream (seed, source, copy, 0) drives the pre-transform and the
mixing picture; view v in {1, 2} uses stream (seed, source, copy, v). Output bytes therefore
depend only on (seed, source, copy, config, input), never on batch size, order or worker.

Draw order of a view (documented because it defines the stream's meaning):
    w_1..w_k   k exponentials, normalised (Dirichlet(1, ..., 1))
    m          U(0, 1) (Beta(1, 1))
    per chain: kind coin (heads: image chain, tails: patch chain), n_ops = randint(0, t), then
               per image op: op = randint(0, n_ops_list - 1), L = U(0.1, severity), negate coin
               per patch op: size = choice(patch_sizes), rule = randint(0, 3),
                             [mixed source: coin (heads: image_op(x) with op, L, negate draws)],
                             then patch_mix's own draws (patch.py).
    out = round_half_up((1 - m) * x + m * sum_i w_i * c_i), clamped to [0, 255]
Chains with no ops are x, so they fold into x's coefficient (same image, less work).

Tracing: ``trace=True`` makes the kernel record every draw (and each chain's final image) so
tests can check the distributions and replay the maths; without it the kernel writes the same
records into one reused scratch row, so the traced and untraced outputs are identical.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np

from fractals.rng import coin, exponential, randint, stream_key_nb, uniform, uniform_range
from ipmix_cli.augment.ops.dispatch import apply_image_op, apply_image_op_into
from ipmix_cli.augment.patch import (
    OP_FIELDS,
    OPF_KIND,
    OPF_LEVEL,
    OPF_NEGATE,
    OPF_OP,
    OPF_RULE,
    OPF_SIZE,
    OPF_SOURCE,
    draw_box,
    mix_box,
    patch_mix,
)
from ipmix_cli.augment.pretransform import (
    PRE_FIELDS,
    PRE_PICK,
    cifar_flip_crop,
    random_crop_picture,
    random_flip,
)

__all__ = [
    "PRE_MODE_CIFAR",
    "PRE_MODE_FLIP",
    "PRE_MODE_NONE",
    "RecipeTrace",
    "chain_offset",
    "ipmix_batch",
    "stream_keys",
    "view_record_length",
]

PRE_MODE_NONE = 0  # x = input
PRE_MODE_CIFAR = 1  # flip + padded random crop
PRE_MODE_FLIP = 2  # flip only (ImageNet: RandomResizedCrop ran before the kernel)

KIND_IMAGE = 0
KIND_PATCH = 1

# View record: [m, w_1..w_k, then per chain: kind, n_ops, t op records of OP_FIELDS floats].
REC_M = 0
REC_W = 1


def view_record_length(k: int, t: int) -> int:
    """Length of one view's trace record for ``k`` chains of at most ``t`` ops."""
    return 1 + k + k * (2 + t * OP_FIELDS)


@nb.njit(cache=True, inline="always")
def chain_offset(k: int, t: int, i: int) -> int:
    """Where chain ``i``'s (kind, n_ops, ops...) block starts in a view record."""
    return 1 + k + i * (2 + t * OP_FIELDS)


@nb.njit(cache=True)
def stream_keys(seed: np.uint64, sources: np.ndarray, copies: np.ndarray, view: int) -> np.ndarray:
    """Starting states of stream (seed, source, copy, view) for every sample."""
    out = np.empty(sources.shape[0], dtype=np.uint64)
    for n in range(sources.shape[0]):
        out[n] = stream_key_nb(seed, sources[n], copies[n], view)
    return out


@nb.njit(cache=True, inline="always")
def copy_image(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[...] = src`` for C-contiguous arrays of equal size, as a flat loop (numba's
    multi-dimensional slice assignment is ~50x slower)."""
    d = dst.reshape(-1)
    s = src.reshape(-1)
    for i in range(d.shape[0]):
        d[i] = s[i]


@nb.njit(cache=True, inline="always")  # inlined: one fewer LLVM pass over the image ops
def _ipmix_view(
    x: np.ndarray,
    p: np.ndarray,
    state: np.ndarray,
    k: int,
    t: int,
    beta: float,
    severity: float,
    n_ops: int,
    patch_sizes: np.ndarray,
    mixed_source: bool,
    overflow: int,
    out: np.ndarray,
    acc: np.ndarray,
    cbuf: np.ndarray,
    sbuf: np.ndarray,
    wts: np.ndarray,
    rec: np.ndarray,
    trace_on: bool,
    chains: np.ndarray,
) -> None:
    """One IPMix view of ``x`` (mixing picture ``p``) into ``out``; see the module docstring."""
    total = 0.0
    for i in range(k):
        draw = exponential(state)
        wts[i] = draw
        total += draw
    m = uniform(state)
    rec[REC_M] = m
    for i in range(k):
        wts[i] = wts[i] / total
        rec[REC_W + i] = wts[i]

    # Chains are summed one step late: the sum starts as the first chain's term (0 + y is y
    # exactly, so the zeroing pass goes), and the last chain's term is added in the final
    # pass, so the image is walked once less with the same float32 operations in the same
    # order. ``pending`` is the chain not yet added: an image chain's own array, or cbuf,
    # which is added before a later patch chain overwrites it.
    accf = acc.reshape(-1)
    summed = 0  # chains added into acc so far
    pending = x  # (a placeholder while has_pending is False)
    has_pending = False
    pending_is_cbuf = False
    pending_coef = np.float32(0.0)
    coef_x = 1.0 - m
    n_sizes = patch_sizes.shape[0]
    for i in range(k):
        base = chain_offset(k, t, i)
        kind = KIND_IMAGE if coin(state) else KIND_PATCH
        nops = randint(state, 0, t)
        rec[base] = kind
        rec[base + 1] = nops
        if trace_on:
            rec[base + 2 : base + 2 + t * OP_FIELDS] = np.nan
        if nops == 0:
            coef_x += m * wts[i]
            if trace_on:
                copy_image(chains[i], x)
            continue
        if kind == KIND_IMAGE:
            c = x
            for j in range(nops):
                r = rec[base + 2 + j * OP_FIELDS : base + 2 + (j + 1) * OP_FIELDS]
                op = randint(state, 0, n_ops - 1)
                level = uniform_range(state, 0.1, severity)
                negate = coin(state)
                r[OPF_KIND] = KIND_IMAGE
                r[OPF_OP] = op
                r[OPF_LEVEL] = level
                r[OPF_NEGATE] = 1.0 if negate else 0.0
                c = apply_image_op(op, c, level, negate)
        else:
            if has_pending and pending_is_cbuf:
                _add_chain(accf, pending.ravel(), pending_coef, summed == 0)
                summed += 1
                has_pending = False
            copy_image(cbuf, x)
            c = cbuf
            for j in range(nops):
                r = rec[base + 2 + j * OP_FIELDS : base + 2 + (j + 1) * OP_FIELDS]
                size = patch_sizes[randint(state, 0, n_sizes - 1)]
                rule = randint(state, 0, 3)
                r[OPF_KIND] = KIND_PATCH
                r[OPF_SIZE] = size
                r[OPF_RULE] = rule
                if mixed_source and coin(state):
                    op = randint(state, 0, n_ops - 1)
                    level = uniform_range(state, 0.1, severity)
                    negate = coin(state)
                    r[OPF_SOURCE] = 1.0
                    r[OPF_OP] = op
                    r[OPF_LEVEL] = level
                    r[OPF_NEGATE] = 1.0 if negate else 0.0
                    left, top, pw, ph = draw_box(state, x.shape[0], x.shape[1], size, r)
                    apply_image_op_into(op, x, level, negate, sbuf, top, left, ph, pw)
                    mix_box(cbuf, sbuf, left, top, pw, ph, rule, state, beta, overflow, r)
                else:
                    r[OPF_SOURCE] = 0.0
                    r[OPF_OP] = -1.0
                    patch_mix(cbuf, p, size, rule, state, beta, overflow, r)
        if trace_on:
            chains[i] = c  # (c may come from an image op with any layout)
        if has_pending:
            _add_chain(accf, pending.ravel(), pending_coef, summed == 0)
            summed += 1
        pending = c
        has_pending = True
        pending_is_cbuf = kind == KIND_PATCH
        pending_coef = np.float32(m * wts[i])

    xf = x.ravel()
    of = out.reshape(-1)
    cx = np.float32(coef_x)
    half = np.float32(0.5)
    lo = np.float32(0.0)
    hi = np.float32(255.0)
    if not has_pending:  # every chain was x: the sum is 0, and 0 + y is y
        for e in range(of.shape[0]):
            v = cx * np.float32(xf[e]) + half
            of[e] = np.uint8(np.int32(min(max(v, lo), hi)))  # round half up, clamped
        return
    cf = pending.ravel()
    if summed == 0:
        for e in range(of.shape[0]):
            v = pending_coef * np.float32(cf[e]) + cx * np.float32(xf[e]) + half
            of[e] = np.uint8(np.int32(min(max(v, lo), hi)))
        return
    for e in range(of.shape[0]):
        v = (accf[e] + pending_coef * np.float32(cf[e])) + cx * np.float32(xf[e]) + half
        of[e] = np.uint8(np.int32(min(max(v, lo), hi)))


@nb.njit(cache=True, inline="always")
def _add_chain(accf: np.ndarray, cf: np.ndarray, coef: np.float32, first: bool) -> None:
    """``acc += coef * c`` in float32; the first chain's term is stored as it is."""
    if first:
        for e in range(accf.shape[0]):
            accf[e] = coef * np.float32(cf[e])
    else:
        for e in range(accf.shape[0]):
            accf[e] += coef * np.float32(cf[e])


@nb.njit(cache=True, nogil=True)
def ipmix_batch(
    images: np.ndarray,
    state0: np.ndarray,
    seed: np.uint64,
    sources: np.ndarray,
    copies: np.ndarray,
    pictures: np.ndarray,
    picture_shapes: np.ndarray,
    pre_mode: int,
    pad: int,
    k: int,
    t: int,
    beta: float,
    severity: float,
    n_ops: int,
    patch_sizes: np.ndarray,
    mixed_source: bool,
    overflow: int,
    jsd: bool,
    out: np.ndarray,
    trace_on: bool,
    trace: np.ndarray,
    trace0: np.ndarray,
    chains_out: np.ndarray,
) -> None:
    """IPMix a batch: ``images`` (N, H, W, 3) uint8 -> ``out`` (N, V, H, W, 3), V = 3 in JSD
    mode ([clean, view1, view2]) else 1.

    ``state0[n]`` is sample n's stream-0 state, already advanced past any draws made before the
    kernel (the ImageNet RandomResizedCrop). When ``trace_on``, ``trace`` (N, views, record),
    ``trace0`` (N, PRE_FIELDS) and ``chains_out`` (N, views, k, H, W, 3) receive every draw and
    each chain's image; otherwise they may be 1-element dummies of the right rank.
    """
    N = images.shape[0]
    H = images.shape[1]
    W = images.shape[2]
    M = pictures.shape[0]
    x = np.empty((H, W, 3), dtype=np.uint8)
    p = np.empty((H, W, 3), dtype=np.uint8)
    cbuf = np.empty((H, W, 3), dtype=np.uint8)
    sbuf = np.empty((H, W, 3), dtype=np.uint8)  # a patch source's box (an image op of x)
    acc = np.empty((H, W, 3), dtype=np.float32)
    wts = np.empty(k, dtype=np.float64)
    st = np.empty(1, dtype=np.uint64)
    rec_scratch = np.empty(1 + k + k * (2 + t * OP_FIELDS), dtype=np.float64)
    rec0_scratch = np.empty(PRE_FIELDS, dtype=np.float64)
    n_views = 2 if jsd else 1
    first_view = 1 if jsd else 0
    for n in range(N):
        rec0 = trace0[n] if trace_on else rec0_scratch
        st[0] = state0[n]
        if pre_mode == PRE_MODE_CIFAR:
            cifar_flip_crop(images[n], st, pad, x, rec0)
        elif pre_mode == PRE_MODE_FLIP:
            random_flip(images[n], st, x, rec0)
        else:
            copy_image(x, images[n])
        pick = randint(st, 0, M - 1)
        rec0[PRE_PICK] = pick
        random_crop_picture(
            pictures[pick], picture_shapes[pick, 0], picture_shapes[pick, 1], st, p, rec0
        )
        if jsd:
            copy_image(out[n, 0], x)
        for v in range(n_views):
            st[0] = stream_key_nb(seed, sources[n], copies[n], v + 1)
            rec = trace[n, v] if trace_on else rec_scratch
            chains = chains_out[n, v] if trace_on else chains_out[0, 0]
            _ipmix_view(
                x,
                p,
                st,
                k,
                t,
                beta,
                severity,
                n_ops,
                patch_sizes,
                mixed_source,
                overflow,
                out[n, first_view + v],
                acc,
                cbuf,
                sbuf,
                wts,
                rec,
                trace_on,
                chains,
            )


@dataclass
class RecipeTrace:
    """Everything the kernel drew for a batch, decoded into named arrays.

    Shapes: N samples, V views (1, or 2 in JSD mode), k chains, t op slots.
    ``ops[..., j, :]`` is NaN for j >= n_ops; its fields are patch.OPF_*.
    """

    pre: np.ndarray  # (N, PRE_FIELDS): pretransform.PRE_* fields
    m: np.ndarray  # (N, V)
    weights: np.ndarray  # (N, V, k)
    kinds: np.ndarray  # (N, V, k) int: 0 image chain, 1 patch chain
    n_ops: np.ndarray  # (N, V, k) int
    ops: np.ndarray  # (N, V, k, t, OP_FIELDS)
    chains: np.ndarray  # (N, V, k, H, W, 3) uint8: each chain's final image

    @classmethod
    def decode(
        cls, trace: np.ndarray, trace0: np.ndarray, chains: np.ndarray, k: int, t: int
    ) -> RecipeTrace:
        """Split the kernel's flat per-view records into named arrays."""
        N, V, _ = trace.shape
        blocks = trace[:, :, 1 + k :].reshape(N, V, k, 2 + t * OP_FIELDS)
        return cls(
            pre=trace0,
            m=trace[:, :, REC_M].copy(),
            weights=trace[:, :, REC_W : REC_W + k].copy(),
            kinds=blocks[:, :, :, 0].astype(np.int64),
            n_ops=blocks[:, :, :, 1].astype(np.int64),
            ops=blocks[:, :, :, 2:].reshape(N, V, k, t, OP_FIELDS).copy(),
            chains=chains,
        )

    def op_records(self, kind: int | None = None) -> np.ndarray:
        """All used op records as a (count, OP_FIELDS) array, optionally one kind only."""
        used = np.arange(self.ops.shape[3])[None, None, None, :] < self.n_ops[..., None]
        recs = self.ops[used]
        if kind is not None:
            recs = recs[recs[:, OPF_KIND] == kind]
        return recs
