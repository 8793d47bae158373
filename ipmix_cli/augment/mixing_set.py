"""The mixing set: the pictures (usually fractals) that IPMix patches are mixed with.

The reference resizes a mixing picture (shorter side to 36 for CIFAR, 256 for ImageNet) and
random-crops it to the output size every time a sample is drawn. The resize is deterministic,
so we do it once here, with Pillow BILINEAR like torchvision's ``Resize`` on PIL images, and
leave only the random crop to the kernel. The pictures are stored as one zero-padded
(M, Hmax, Wmax, 3) uint8 array plus each picture's (h, w), so a jitted kernel can crop any of
them without Python objects, and the whole set pickles cheaply to worker processes.

Shorter side: ``config.mixing_short_side`` or ``floor(min(H, W) * 8 / 7)`` (36 for 32 px, 256
for 224 px). The longer side follows torchvision: ``int(short * long / short_in)``. For a
non-square output a picture that would still not cover it is scaled up until it does, so the
crop never needs padding in normal use.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ipmix_cli.augment.config import IPMixConfig
from ipmix_cli.augment.ops.resample import resize_bilinear

__all__ = ["MixingSet", "resized_shape"]


def resized_shape(h: int, w: int, short_side: int, size: tuple[int, int]) -> tuple[int, int]:
    """(h', w') a picture of h x w is resized to: torchvision Resize(short_side), then scaled up
    (keeping the aspect ratio) if it does not cover ``size`` = (H, W)."""
    if h <= w:
        nh, nw = short_side, int(short_side * w / h)
    else:
        nh, nw = int(short_side * h / w), short_side
    H, W = size
    if nh < H or nw < W:
        f = max(H / h, W / w)
        nh, nw = max(H, math.ceil(h * f)), max(W, math.ceil(w * f))
    return nh, nw


@dataclass(frozen=True, eq=False)
class MixingSet:
    """Prepared mixing pictures: ``pictures[i, :shapes[i, 0], :shapes[i, 1]]`` is picture i.

    Build it with :meth:`from_pictures` (pictures loaded by
    ``ipmix_cli.sources.open_mixing_set``, for example); it is tied to the output
    ``size`` it was prepared for (the kernel crops that size out of each picture).
    """

    pictures: np.ndarray  # (M, Hmax, Wmax, 3) uint8, zero-padded
    shapes: np.ndarray  # (M, 2) int64: (h, w) of each picture
    size: tuple[int, int]  # output (H, W) it was prepared for
    short_side: int

    def __post_init__(self) -> None:
        pics = self.pictures
        if pics.dtype != np.uint8 or pics.ndim != 4 or pics.shape[3] != 3 or pics.shape[0] < 1:
            raise ValueError("MixingSet.pictures must be a non-empty (M, H, W, 3) uint8 array")
        if self.shapes.shape != (pics.shape[0], 2):
            raise ValueError("MixingSet.shapes must be (M, 2)")
        object.__setattr__(self, "pictures", np.ascontiguousarray(pics))
        object.__setattr__(self, "shapes", np.ascontiguousarray(self.shapes, dtype=np.int64))

    def __len__(self) -> int:
        return int(self.pictures.shape[0])

    def picture(self, index: int) -> np.ndarray:
        """Picture ``index`` without its padding (a view)."""
        h, w = self.shapes[index]
        return self.pictures[index, :h, :w]

    @classmethod
    def from_pictures(
        cls,
        pictures: np.ndarray | Iterable[np.ndarray],
        size: tuple[int, int] | IPMixConfig,
        short_side: int | None = None,
    ) -> MixingSet:
        """Resize each RGB uint8 picture (H x W x 3; grey H x W is expanded) for output
        ``size`` (or a config, whose size and mixing_side are used)."""
        if isinstance(size, IPMixConfig):
            if short_side is None:
                short_side = size.mixing_side
            size = size.size
        size = (int(size[0]), int(size[1]))
        if short_side is None:
            short_side = (min(size) * 8) // 7
        prepared = [_prepare(np.asarray(p), short_side, size) for p in pictures]
        if not prepared:
            raise ValueError("a mixing set needs at least one picture")
        return cls._stack(prepared, size, short_side)

    @classmethod
    def _stack(
        cls, prepared: Sequence[np.ndarray], size: tuple[int, int], short_side: int
    ) -> MixingSet:
        hmax = max(p.shape[0] for p in prepared)
        wmax = max(p.shape[1] for p in prepared)
        pics = np.zeros((len(prepared), hmax, wmax, 3), dtype=np.uint8)
        shapes = np.empty((len(prepared), 2), dtype=np.int64)
        for i, p in enumerate(prepared):
            pics[i, : p.shape[0], : p.shape[1]] = p
            shapes[i] = p.shape[:2]
        return cls(pics, shapes, size, short_side)


def _prepare(pic: np.ndarray, short_side: int, size: tuple[int, int]) -> np.ndarray:
    if pic.ndim == 2:
        pic = np.repeat(pic[:, :, None], 3, axis=2)
    if pic.dtype != np.uint8 or pic.ndim != 3 or pic.shape[2] not in (3, 4):
        raise ValueError(f"mixing pictures must be uint8 H x W x 3, got {pic.dtype} {pic.shape}")
    pic = np.ascontiguousarray(pic[:, :, :3])
    h, w = pic.shape[:2]
    nh, nw = resized_shape(h, w, short_side, size)
    if (nh, nw) == (h, w):
        return pic
    return resize_bilinear(pic, (nh, nw))  # Pillow's BILINEAR, bit-exact
