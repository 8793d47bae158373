"""The authors' way of doing IPMix, re-written for side-by-side timing: one sample at a time in
a PyTorch ``Dataset``, Pillow for every image op, tensors for the mixing, a ``DataLoader`` in
front.

This is what ``ipmix augment`` is measured against. It follows the public code's structure
(AugMix's Pillow op list, PixMix's mixing rules, IPMix's chains and patches, torchvision's
pre-transforms) as described in our algorithm notes, so that it pays the same costs per sample:

* the source is loaded per sample (``Image.fromarray`` of an in-memory CIFAR array, or
  ``Image.open(...).convert("RGB")`` of a JPEG file, like ``ImageFolder``);
* the pre-transform (flip + padded crop, or RandomResizedCrop + flip) runs on the PIL image;
* a mixing picture is loaded from the bank's PNG files per sample and resized (shorter side to
  36 or 256) and randomly cropped;
* every image op is a Pillow call on a PIL image; every mix converts crops or whole images to
  float tensors (``ToTensor``) and back;
* the sample is normalised (mean 0.5, std 0.5) and collated into batches.

It is not bit-compatible with ``ipmix`` (its random stream is numpy's global one) and is not
meant to be: it is a cost model that draws from the same distribution. torchvision is not
needed: its PIL paths (crop, then ``resize`` BILINEAR; ``transpose``; ``ImageOps.expand`` for
the padding) are called directly.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

CIFAR = {
    "size": 32,
    "k": 3,
    "t": 3,
    "beta": 3,
    "severity": 3,
    "patches": (4, 8, 16, 32),
    "aug_patch": False,
    "picture_side": 36,
}
IMAGENET = {
    "size": 224,
    "k": 3,
    "t": 3,
    "beta": 4,
    "severity": 1,
    "patches": (4, 8, 16, 32, 64, 224),
    "aug_patch": True,
    "picture_side": 256,
}


# --- image-level ops (AugMix's list plus mirror and invert), Pillow on PIL images ---------


def _level(severity: float) -> float:
    return np.random.uniform(low=0.1, high=severity)


def _int_param(level: float, maxval: float) -> int:
    return int(level * maxval / 10)


def _float_param(level: float, maxval: float) -> float:
    return float(level) * maxval / 10.0


def _sign() -> float:
    return -1.0 if np.random.uniform() > 0.5 else 1.0


def equalize(img, severity, size):
    return ImageOps.equalize(img)


def posterize(img, severity, size):
    return ImageOps.posterize(img, 4 - _int_param(_level(severity), 4))


def rotate(img, severity, size):
    degrees = _int_param(_level(severity), 30) * _sign()
    return img.rotate(degrees, resample=Image.BILINEAR)


def solarize(img, severity, size):
    return ImageOps.solarize(img, 256 - _int_param(_level(severity), 256))


def shear_x(img, severity, size):
    s = _float_param(_level(severity), 0.3) * _sign()
    return img.transform((size, size), Image.AFFINE, (1, s, 0, 0, 1, 0), resample=Image.BILINEAR)


def shear_y(img, severity, size):
    s = _float_param(_level(severity), 0.3) * _sign()
    return img.transform((size, size), Image.AFFINE, (1, 0, 0, s, 1, 0), resample=Image.BILINEAR)


def translate_x(img, severity, size):
    d = _int_param(_level(severity), size / 3) * _sign()
    return img.transform((size, size), Image.AFFINE, (1, 0, d, 0, 1, 0), resample=Image.BILINEAR)


def translate_y(img, severity, size):
    d = _int_param(_level(severity), size / 3) * _sign()
    return img.transform((size, size), Image.AFFINE, (1, 0, 0, 0, 1, d), resample=Image.BILINEAR)


def mirror(img, severity, size):
    return ImageOps.mirror(img)


def invert(img, severity, size):
    return ImageOps.invert(img)


OPS = (
    equalize,
    posterize,
    rotate,
    solarize,
    shear_x,
    shear_y,
    translate_x,
    translate_y,
    mirror,
    invert,
)


# --- pixel-level mixing rules (PixMix's), on float tensors in [0, 1] --------------------------


def _weights(beta: float) -> tuple[float, float]:
    if np.random.random() < 0.5:
        return np.float32(np.random.beta(beta, 1)), np.float32(np.random.beta(1, beta))
    return 1 + np.float32(np.random.beta(1, beta)), -np.float32(np.random.beta(1, beta))


def add(a, b, beta):
    wa, wb = _weights(beta)
    return (wa * (a * 2 - 1) + wb * (b * 2 - 1) + 1) / 2


def multiply(a, b, beta):
    wa, wb = _weights(beta)
    return ((a * 2) ** wa * (b * 2).clip(1e-37) ** wb) / 2


def random_pixels(a, b, beta):
    q = np.random.uniform()
    mask = torch.rand(a.shape[1:]) < q
    return torch.where(mask, a, b)


def random_elems(a, b, beta):
    q = np.random.uniform()
    mask = torch.rand(a.shape) < q
    return torch.where(mask, a, b)


MIXINGS = (add, multiply, random_pixels, random_elems)


def to_tensor(img) -> torch.Tensor:
    """torchvision's ``ToTensor`` on an RGB PIL image: CHW float32 in [0, 1]."""
    array = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True))
    return array.permute(2, 0, 1).contiguous().float().div(255)


# --- IPMix: chains of image ops or patch mixes, Dirichlet-weighted, then a Beta blend --------


def patch_mix(img, src, patch_size: int, rule, beta: float):
    width, height = img.size
    size = min(patch_size, width, height)
    left = random.randint(0, width - size)
    top = random.randint(0, height - size)
    if random.random() < 0.5:
        w = h = size
    else:
        w, h = random.randint(2, size), random.randint(2, size)
    box = (left, top, left + w, top + h)
    mixed = rule(to_tensor(img.crop(box)), to_tensor(src.crop(box)), beta)
    patch = (mixed * 255).permute(1, 2, 0).numpy().astype(np.uint8)  # the wrap quirk
    out = img.copy()
    out.paste(Image.fromarray(patch), box)
    return out


def ipmix(image, picture, p: dict) -> torch.Tensor:
    size, severity = p["size"], p["severity"]
    chain_weights = np.float32(np.random.dirichlet([1] * p["k"]))
    m = np.float32(np.random.beta(1, 1))
    mix = torch.zeros_like(to_tensor(image))
    for i in range(p["k"]):
        chain = image.copy()
        depth = np.random.randint(0, p["t"] + 1)
        if random.random() < 0.5:
            for _ in range(depth):
                chain = random.choice(OPS)(chain, severity, size)
        else:
            for _ in range(depth):
                src = picture
                if p["aug_patch"] and random.random() < 0.5:
                    src = random.choice(OPS)(image, severity, size)
                chain = patch_mix(
                    chain, src, random.choice(p["patches"]), random.choice(MIXINGS), p["beta"]
                )
        mix += chain_weights[i] * to_tensor(chain)
    mixed = (1 - m) * to_tensor(image) + m * mix
    return (mixed - 0.5) / 0.5


# --- pre-transforms (torchvision's PIL paths) -------------------------------------------------


def cifar_pre(img, size: int):
    if random.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    img = ImageOps.expand(img, border=4, fill=0)
    top, left = random.randint(0, 8), random.randint(0, 8)
    return img.crop((left, top, left + size, top + size))


def random_resized_crop(img, size: int):
    width, height = img.size
    area = width * height
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    for _ in range(10):
        target = area * random.uniform(0.08, 1.0)
        aspect = math.exp(random.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top, left = random.randint(0, height - h), random.randint(0, width - w)
            break
    else:
        w, h = min(width, height), min(width, height)
        top, left = (height - h) // 2, (width - w) // 2
    img = img.crop((left, top, left + w, top + h)).resize((size, size), Image.BILINEAR)
    if random.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return img


def picture_transform(img, side: int, size: int):
    """``Resize(side)`` then ``RandomCrop(size)``: how the reference prepares a mixing picture."""
    width, height = img.size
    if width <= height:
        new = (side, int(side * height / width))
    else:
        new = (int(side * width / height), side)
    img = img.resize(new, Image.BILINEAR)
    top, left = random.randint(0, new[1] - size), random.randint(0, new[0] - size)
    return img.crop((left, top, left + size, top + size))


class ReferenceIPMix(torch.utils.data.Dataset):
    """One IPMix sample per ``__getitem__``, as the authors' training scripts draw them."""

    def __init__(self, items, labels, bank: Path, preset: dict) -> None:
        self.items = items  # a uint8 array (CIFAR) or a list of JPEG paths (ImageNet)
        self.labels = labels
        self.pictures = sorted(Path(bank).rglob("*.png"))
        self.p = preset

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        size = self.p["size"]
        item = self.items[index]
        if isinstance(item, np.ndarray):
            image = cifar_pre(Image.fromarray(item), size)
        else:
            image = random_resized_crop(Image.open(item).convert("RGB"), size)
        path = self.pictures[np.random.randint(len(self.pictures))]
        picture = picture_transform(Image.open(path).convert("RGB"), self.p["picture_side"], size)
        return ipmix(image, picture, self.p), int(self.labels[index])


def loader(items, labels, bank: Path, preset: dict, batch_size: int = 128, seed: int = 0):
    """A single-process ``DataLoader`` over the reference dataset (one core, like a worker)."""
    np.random.seed(seed)
    random.seed(seed)
    torch.manual_seed(seed)
    dataset = ReferenceIPMix(items, labels, bank, preset)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0)
