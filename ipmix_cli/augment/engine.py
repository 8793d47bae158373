"""Public Python API of the IPMix engine: batches of uint8 images in, augmented images out.

The augment command calls these from worker processes. Each sample is identified by
``(source_index, copy_index)``; together with the root ``seed`` that fixes every random draw
(fractals.rng streams), so a sample's bytes do not depend on which batch, worker or resumed
run produced it.

Layouts: input (N, H, W, 3) uint8 RGB. Output (N, H', W', 3), or (N, 3, H', W', 3) in JSD mode
holding [clean (pre-transformed x), view 1, view 2].

Fast path: :func:`augment_batch` with the CIFAR or "none" pre-transform runs one jitted kernel
over the whole batch of output-size images. With the ImageNet pre-transform each image first
goes through RandomResizedCrop (one compiled call per image, resized into its row of the
batch), then the same kernel runs on the batch. :func:`augment_images` is the path for images of
any sizes: with CIFAR and "none" it first applies the config's size policy (``resize``) to each,
so an image of the output size gets the same bytes down either path. :func:`clean_images` is
the export without augmentation (a validation set): the size policy alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fractals.rng import MASK64
from ipmix_cli.augment.allocator import keep_image_buffers_on_heap
from ipmix_cli.augment.config import ConfigError, IPMixConfig
from ipmix_cli.augment.mixing_set import MixingSet
from ipmix_cli.augment.pixel_rules import overflow_code
from ipmix_cli.augment.pretransform import (
    PRE_FIELDS,
    RRC_RATIO,
    RRC_SCALE,
    resize_center_crop,
    rrc_into,
    rrc_params,
)
from ipmix_cli.augment.recipe import (
    PRE_MODE_CIFAR,
    PRE_MODE_FLIP,
    PRE_MODE_NONE,
    RecipeTrace,
    ipmix_batch,
    stream_keys,
    view_record_length,
)

__all__ = [
    "augment_batch",
    "augment_batch_traced",
    "augment_image",
    "augment_images",
    "clean_images",
    "warmup",
]

keep_image_buffers_on_heap()  # every process that augments imports this module


def augment_batch(
    images: np.ndarray,
    source_indices: np.ndarray,
    copy_index: int | np.ndarray,
    mixing: MixingSet,
    config: IPMixConfig,
    seed: int,
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """IPMix a batch of same-size images.

    ``images``: (N, H, W, 3) uint8. For ``pre`` 'cifar' and 'none', (H, W) must equal
    ``config.size`` (this path never resizes; :func:`augment_images` applies ``resize``); for
    'imagenet' any size (each image is RandomResizedCrop'd to it).
    ``source_indices``: (N,) dataset indices; ``copy_index``: one int or (N,) ints.
    Returns (N, H', W', 3) uint8, or (N, 3, H', W', 3) = [clean, view1, view2] with ``jsd``.
    ``out``: a C-contiguous uint8 array of that shape to write the result into (and return),
    such as a slice of a shard's rows, which saves gathering batches into it afterwards.
    """
    return _run(
        images, source_indices, copy_index, mixing, config, seed, False, resize=False, out=out
    )[0]


def augment_images(
    images: Sequence[np.ndarray],
    source_indices: np.ndarray | Sequence[int],
    copy_index: int | np.ndarray,
    mixing: MixingSet,
    config: IPMixConfig,
    seed: int,
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Like :func:`augment_batch` for a list of images of any sizes, with every preset: with
    'imagenet' each is RandomResizedCrop'd to ``config.size``; with 'cifar' and 'none' each goes
    through the size policy first (``resize='center'``: Resize + CenterCrop, an image of the
    output size untouched; ``'exact'``: refused unless of the output size). Then one kernel
    call for all, so each sample has the bytes :func:`augment_batch` gives it. ``out`` as for
    :func:`augment_batch`."""
    return _run(
        images, source_indices, copy_index, mixing, config, seed, False, resize=True, out=out
    )[0]


def augment_image(
    image: np.ndarray,
    source_index: int,
    copy_index: int,
    mixing: MixingSet,
    config: IPMixConfig,
    seed: int,
) -> np.ndarray:
    """IPMix one image of any size (H x W x 3 uint8). Same bytes as the same sample inside
    any batch. Returns (H', W', 3), or (3, H', W', 3) with ``jsd``."""
    out = _run([image], [source_index], copy_index, mixing, config, seed, False, resize=True)[0]
    return out[0]


def augment_batch_traced(
    images: np.ndarray | Sequence[np.ndarray],
    source_indices: np.ndarray | Sequence[int],
    copy_index: int | np.ndarray,
    mixing: MixingSet,
    config: IPMixConfig,
    seed: int,
) -> tuple[np.ndarray, RecipeTrace]:
    """:func:`augment_batch` (for an array) or :func:`augment_images` (for a list) plus a
    :class:`RecipeTrace` of every random draw and each chain's image (for tests, debugging and
    the docs' picture grid; the images are identical)."""
    resize = not isinstance(images, np.ndarray)
    out, trace = _run(images, source_indices, copy_index, mixing, config, seed, True, resize)
    assert trace is not None
    return out, trace


def clean_images(images: np.ndarray | Sequence[np.ndarray], config: IPMixConfig) -> np.ndarray:
    """The export without augmentation (a validation or test set): each image through
    torchvision's ``Resize(config.resize_side)`` + ``CenterCrop(config.size)`` (an image of
    the output size untouched), whatever ``pre`` and ``resize``: an evaluation transform has
    no random crop to feed, and a validation set's images are rarely all of one size, so
    ``resize`` (which governs what the augmentation's pre-transforms accept) does not apply.
    Nothing is random: no seed.

    Returns (N, H, W, 3) uint8 (one view, also with ``jsd``).
    """
    if not isinstance(config, IPMixConfig):
        raise TypeError(f"config must be an IPMixConfig, got {type(config).__name__}")
    return _fit_to_size(images, config, resize=True, policy=False)


def warmup(config: IPMixConfig) -> None:
    """Compile (or load from numba's cache) every kernel this config uses, on tiny inputs, so
    the first real batch is not charged for it."""
    small = config.replace(size=(8, 8), patch_sizes=(2, 4), mixing_short_side=None)
    mixing = MixingSet.from_pictures([np.zeros((9, 9, 3), np.uint8)], small)
    images = np.zeros((2, 8, 8, 3), np.uint8)
    sources = np.arange(2, dtype=np.int64)
    augment_batch(images, sources, 0, mixing, small, 0)
    augment_batch_traced(images, sources, 0, mixing, small, 0)
    rrc_params(np.zeros(1, np.uint64), 8, 8, 0.08, 1.0, 0.75, 4.0 / 3.0)


def _run(
    images: np.ndarray | Sequence[np.ndarray],
    source_indices: np.ndarray | Sequence[int],
    copy_index: int | np.ndarray,
    mixing: MixingSet,
    config: IPMixConfig,
    seed: int,
    trace: bool,
    resize: bool,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, RecipeTrace | None]:
    if not isinstance(config, IPMixConfig):
        raise TypeError(f"config must be an IPMixConfig, got {type(config).__name__}")
    if not isinstance(mixing, MixingSet):
        raise TypeError(f"mixing must be a MixingSet, got {type(mixing).__name__}")
    if tuple(mixing.size) != config.size:
        raise ConfigError(
            f"the mixing set was prepared for size {tuple(mixing.size)} but the config's size "
            f"is {config.size}; prepare it with MixingSet.from_pictures(pictures, config)"
        )
    n = len(images)
    sources = np.ascontiguousarray(np.asarray(source_indices, dtype=np.int64).reshape(-1))
    if sources.shape[0] != n:
        raise ValueError(f"{n} images but {sources.shape[0]} source indices")
    copies = np.ascontiguousarray(
        np.broadcast_to(np.asarray(copy_index, dtype=np.int64), (n,)).copy()
    )
    seed64 = np.uint64(int(seed) & MASK64)
    state0 = stream_keys(seed64, sources, copies, 0)
    H, W = config.size
    k, t = config.k, config.t
    n_views = 2 if config.jsd else 1
    given = out
    out = _result_array(given, (n, config.n_views, H, W, 3))

    trace0 = np.full((max(n, 1), PRE_FIELDS), -1.0) if trace else np.empty((1, 1))
    if config.pre == "imagenet":
        batch = np.empty((n, H, W, 3), dtype=np.uint8)
        scratch = np.empty(PRE_FIELDS)
        limits = (*RRC_SCALE, *RRC_RATIO)
        for i in range(n):  # each crop resized straight into its row of the batch
            img = np.ascontiguousarray(_check_image(images[i], i))
            record = trace0[i] if trace else scratch
            rrc_into(img, state0[i : i + 1], batch[i], record, *limits)
        pre_mode = PRE_MODE_FLIP
    else:
        batch = _fit_to_size(images, config, resize)
        pre_mode = PRE_MODE_CIFAR if config.pre == "cifar" else PRE_MODE_NONE

    if trace:
        rec = np.empty((n, n_views, view_record_length(k, t)), dtype=np.float64)
        chains = np.empty((n, n_views, k, H, W, 3), dtype=np.uint8)
    else:
        rec = np.empty((1, 1, 1), dtype=np.float64)
        chains = np.empty((1, 1, 1, 1, 1, 3), dtype=np.uint8)
    if n:
        ipmix_batch(
            batch,
            state0,
            seed64,
            sources,
            copies,
            mixing.pictures,
            mixing.shapes,
            pre_mode,
            config.crop_padding,
            k,
            t,
            float(config.beta),
            float(config.severity),
            config.n_ops,
            np.asarray(config.patch_sizes, dtype=np.int64),
            config.patch_source == "mixed",
            overflow_code(config.patch_overflow),
            config.jsd,
            out,
            trace,
            rec,
            trace0,
            chains,
        )
    result = given if given is not None else out if config.jsd else out.reshape(n, H, W, 3)
    if not trace:
        return result, None
    return result, RecipeTrace.decode(rec, trace0[:n], chains, k, t)


def _result_array(given: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """The kernel's (N, views, H, W, 3) output: new, or a view of the caller's ``given`` array
    of the result's shape ((N, H, W, 3) for one view)."""
    if given is None:
        return np.empty(shape, dtype=np.uint8)
    n, views = shape[0], shape[1]
    expected = shape if views > 1 else (n, *shape[2:])
    if given.shape != expected or given.dtype != np.uint8 or not given.flags.c_contiguous:
        raise ValueError(
            f"out must be a C-contiguous uint8 array of shape {expected}, got {given.dtype} "
            f"{given.shape}{'' if given.flags.c_contiguous else ' (not C-contiguous)'}"
        )
    return given.reshape(shape)


def _fit_to_size(
    images: np.ndarray | Sequence[np.ndarray],
    config: IPMixConfig,
    resize: bool,
    policy: bool = True,
) -> np.ndarray:
    """The (N, H, W, 3) C-contiguous batch of output-size images the kernel (or the clean
    export) takes, from any images; ``resize`` says whether this path resizes at all
    (``augment_batch`` does not: it is the path without Pillow), ``policy`` whether
    ``config.resize='exact'`` may refuse (not for the clean export). An array already of the
    output size is passed through without a per-image loop."""
    H, W = config.size
    if isinstance(images, np.ndarray) and images.ndim == 4:
        if images.dtype != np.uint8 or images.shape[3] != 3:
            raise ValueError(
                f"images must be (N, H, W, 3) uint8, got {images.dtype} {images.shape}"
            )
        if images.shape[1:3] == (H, W):
            return np.ascontiguousarray(images)
    elif isinstance(images, np.ndarray) and not resize:
        raise ValueError(f"images must be (N, H, W, 3) uint8, got {images.dtype} {images.shape}")
    may_resize = resize and (config.accepts_any_size or not policy)
    n = len(images)
    batch = np.empty((n, H, W, 3), dtype=np.uint8)
    for i in range(n):
        img = _check_image(images[i], i)
        if img.shape[:2] != (H, W) and not may_resize:
            h, w = img.shape[:2]
            if resize:
                why = f"with pre={config.pre!r} and resize='exact' inputs must already have it"
                hint = "resize='center' resizes and centre-crops them"
            else:
                why = f"augment_batch with pre={config.pre!r} takes images of the output size only"
                hint = "augment_images resizes others (resize='center')"
            raise ValueError(f"image {i} is {h}x{w} but config.size is {H}x{W}; {why}; {hint}")
        batch[i] = resize_center_crop(img, (H, W), config.resize_side)
    return batch


def _check_image(img: np.ndarray, i: int) -> np.ndarray:
    arr = np.asarray(img)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or 0 in arr.shape:
        raise ValueError(f"image {i} must be H x W x 3 uint8, got {arr.dtype} {arr.shape}")
    return arr
