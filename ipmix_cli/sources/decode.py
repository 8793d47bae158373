"""Decode any image file Pillow can open into the tool's one image type: uint8, HWC, RGB.

Everything downstream (augmentation kernels, shards) assumes exactly three 8-bit channels, so all
the ways a picture can be stored are normalised here, once, with explicit rules:

* EXIF orientation is applied first (``ImageOps.exif_transpose``), so a phone photo comes out
  the way it is displayed, not the way the sensor stored it.
* Grayscale (``1``, ``L``) is replicated to three channels.
* 16-bit and 32-bit integer grayscale (``I;16*``, ``I``) is taken as a 0..65535 range and
  scaled to 0..255 with rounding, ``round(v * 255 / 65535)``. Clipping (what
  ``Image.convert("L")`` does) would turn most 16-bit pictures white. Values of mode ``I`` outside
  0..65535 are clipped to that range first. Float images (``F``) are clipped to 0..255 and
  rounded.
* Anything with an alpha channel (``RGBA``, ``LA``, ``PA``, ``P`` with transparency) is composited
  on black: every colour channel becomes ``round(c * a / 255)`` -- the premultiplied colour --
  and alpha is dropped. Already premultiplied modes (``RGBa``, ``La``) just drop alpha.
* ``P`` without transparency, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``RGBX``: Pillow's
  ``convert("RGB")``.
* 16-bit-per-channel colour files are delivered by Pillow as 8-bit RGB already (it keeps the high
  byte); that is a proper scale, not a clip, and is used as is.

Plain RGB PNGs with unfiltered rows (what ipmix's banks are) are decoded without Pillow
(:mod:`ipmix_cli.sources.plain_png`), to the same pixels; so are plain JPEGs (YCbCr or grey,
no EXIF), by simplejpeg's libjpeg-turbo (:mod:`ipmix_cli.sources.fast_jpeg`).

``img.load()`` is always called, so a truncated file fails here, at decode time, with a one-line
:class:`~ipmix_cli.errors.DecodeError` naming it. ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never
enabled: silently zero-filled pictures would poison a training set.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from ipmix_cli.errors import DecodeError
from ipmix_cli.fs.regular import NotRegularFileError, read_regular
from ipmix_cli.sources.fast_jpeg import SOI, decode_simple_jpeg
from ipmix_cli.sources.plain_png import SIGNATURE, decode_plain_png

__all__ = ["IMAGE_EXTENSIONS", "decode_image", "is_image_name", "to_rgb_array"]

#: File name extensions (lower case) treated as images when scanning folders.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".png",
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jfif",
        ".bmp",
        ".dib",
        ".gif",
        ".tif",
        ".tiff",
        ".webp",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
        ".tga",
    }
)

ImageInput = str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO | Image.Image


def is_image_name(name: str) -> bool:
    """True when ``name`` has an image extension (case-insensitive)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _label(src: object, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(src, (str, os.PathLike)):
        return str(Path(src))
    if isinstance(src, Image.Image):
        return "<PIL image>"
    return "<bytes>"


def decode_image(src: ImageInput, *, name: str | None = None) -> np.ndarray:
    """Decode ``src`` (a path, bytes, a binary file object or a PIL image) to uint8 (H, W, 3).

    ``name`` is what error messages call the input (defaults to the path, or ``<bytes>``);
    pass it when decoding bytes read from a file so the message still names the file.
    Raises :class:`DecodeError` for a zero-byte file, a non-image file, a truncated or corrupt
    image, or an image too large for Pillow's decompression-bomb limit.
    """
    label = _label(src, name)
    if isinstance(src, Image.Image):
        return to_rgb_array(src, name=label)
    if isinstance(src, (str, os.PathLike)):
        try:
            data = read_regular(src)
        except FileNotFoundError:
            raise DecodeError(label, "no such file") from None
        except NotRegularFileError as error:
            raise DecodeError(label, f"{error.kind}, not an image file") from None
        except OSError as error:
            raise DecodeError(label, f"cannot read file ({error.strerror or error})") from None
        stream: BinaryIO = io.BytesIO(data)
    elif isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
        stream = io.BytesIO(data)
    else:
        data = None
        stream = src
    if data is not None and len(data) == 0:
        raise DecodeError(label, "empty file (0 bytes), not an image")
    if data is not None and data.startswith(SIGNATURE):  # a bank's own PNGs skip Pillow
        plain = decode_plain_png(data)
        if plain is not None:
            return plain
    if data is not None and data.startswith(SOI):  # most photos: libjpeg-turbo, no copies
        pixels = decode_simple_jpeg(data)
        if pixels is not None:
            return pixels
    try:
        with warnings.catch_warnings():
            # A bomb *warning* is only advisory; the hard limit still raises below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(stream)
            img.load()
    except UnidentifiedImageError:
        raise DecodeError(label, "not an image file (Pillow cannot identify it)") from None
    except Image.DecompressionBombError as error:
        raise DecodeError(label, f"image too large ({error})") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as error:
        # Pillow reports truncation as OSError("image file is truncated ...") and some
        # corrupt headers as SyntaxError / ValueError / struct.error (plug-in dependent).
        raise DecodeError(label, f"truncated or corrupt image ({error})") from None
    return to_rgb_array(img, name=label)


def _scale16(values: np.ndarray) -> np.ndarray:
    """Map 0..65535 to 0..255 with rounding: ``round(v * 255 / 65535)``.

    ``v * 255 / 65535`` is never exactly ``k + 0.5`` (65535 is odd), so integer rounding by
    ``(v * 255 + 32767) // 65535`` is exact.
    """
    v = np.clip(values.astype(np.int64), 0, 65535)
    return ((v * 255 + 32767) // 65535).astype(np.uint8)


def _premultiply(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite on black: ``round(c * a / 255)`` per channel (exact integer rounding)."""
    c = rgb.astype(np.uint32)
    a = alpha.astype(np.uint32)[..., None]
    return ((c * a + 127) // 255).astype(np.uint8)


def _gray3(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


#: EXIF orientations that ``ImageOps.exif_transpose`` turns or flips (1 and others: as stored).
_TURNED = frozenset(range(2, 9))


def _upright(img: Image.Image) -> Image.Image:
    """``ImageOps.exif_transpose(img)``, minus the copy of the pixels it makes when there is
    nothing to turn (most pictures: a tenth of a PNG's decode time). A broken EXIF block must
    not lose an otherwise good picture: the picture is then used as stored."""
    try:
        img.load()  # as exif_transpose does: some formats' EXIF is known once loaded
        if img.getexif().get(ExifTags.Base.Orientation, 1) not in _TURNED:
            return img
        return ImageOps.exif_transpose(img)
    except Exception:
        return img


def to_rgb_array(img: Image.Image, *, name: str = "<PIL image>") -> np.ndarray:
    """Normalise a loaded PIL image to uint8 (H, W, 3) RGB with the rules in the module doc."""
    img = _upright(img)
    mode = img.mode
    try:
        if mode == "RGB":
            out = np.asarray(img, dtype=np.uint8)
        elif mode == "L":
            out = _gray3(np.asarray(img, dtype=np.uint8))
        elif mode == "1":
            out = _gray3(np.asarray(img.convert("L"), dtype=np.uint8))
        elif mode.startswith("I;16") or mode == "I":
            out = _gray3(_scale16(np.asarray(img)))
        elif mode == "F":
            arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0)
            out = _gray3(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
        elif mode == "RGBA":
            arr = np.asarray(img, dtype=np.uint8)
            out = _premultiply(arr[..., :3], arr[..., 3])
        elif mode == "LA":
            arr = np.asarray(img, dtype=np.uint8)
            out = _gray3(_premultiply(arr[..., :1], arr[..., 1])[..., 0])
        elif mode == "RGBa":
            out = np.asarray(img, dtype=np.uint8)[..., :3]
        elif mode == "La":
            out = _gray3(np.asarray(img, dtype=np.uint8)[..., 0])
        elif mode == "PA" or (mode == "P" and "transparency" in img.info):
            arr = np.asarray(img.convert("RGBA"), dtype=np.uint8)
            out = _premultiply(arr[..., :3], arr[..., 3])
        else:  # P, CMYK, YCbCr, LAB, HSV, RGBX, ...
            out = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError) as error:
        raise DecodeError(name, f"cannot convert image mode {mode!r} to RGB ({error})") from None
    if out.ndim != 3 or out.shape[2] != 3:  # pragma: no cover - defensive
        raise DecodeError(name, f"decoded to shape {out.shape}, expected (H, W, 3)")
    return np.ascontiguousarray(out)
