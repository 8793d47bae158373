"""Plain JPEGs (8-bit YCbCr or greyscale, no EXIF, no Adobe marker) decoded by simplejpeg.

Why: decoding was the largest single cost of a 224 px ImageNet job, about 1.0-1.1 ms of a
300-500 px JPEG through Pillow against ~0.75 ms for the whole IPMix sample. Pillow feeds
libjpeg-turbo in 64 KB blocks into its own 4-byte-per-pixel image, which ``np.asarray`` then
copies to RGB; simplejpeg has the same libjpeg-turbo write straight into a numpy array, in
about 0.45 ms. Both ask libjpeg-turbo for the same thing (the accurate integer IDCT, fancy
upsampling, its RGB conversion), so the pixels are Pillow's, byte for byte: the tests compare
the two over subsamplings, progressive files, qualities, odd sizes and greyscale.

Anything else returns ``None`` and the caller decodes with Pillow, which then also words the
errors: EXIF (its orientation must be applied), an Adobe marker (CMYK and colour transforms),
12-bit or lossless or arithmetic-coded files, more pixels than Pillow's decompression-bomb
limit, and any file libjpeg warns about (truncated, corrupt: ``strict``).
"""

from __future__ import annotations

import struct

import numpy as np
import simplejpeg
from PIL import Image

SOI = b"\xff\xd8\xff"
_SOF_PLAIN = frozenset({0xC0, 0xC1, 0xC2})  # baseline, extended, progressive Huffman
_SOF_OTHER = frozenset(range(0xC3, 0xD0)) - {0xC4, 0xC8, 0xCC}  # lossless, arithmetic...
_SOS, _APP1, _APP14 = 0xDA, 0xE1, 0xEE


def _is_plain(data: bytes) -> bool:
    """Whether the markers before the scan leave the pixels to libjpeg alone: one plain frame
    of 8-bit samples, no EXIF, no Adobe segment."""
    at, frames = 2, 0
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return False
        marker = data[at + 1]
        if marker == 0xFF:  # fill bytes before a marker
            at += 1
            continue
        (length,) = struct.unpack_from(">H", data, at + 2)
        body = data[at + 4 : at + 2 + length]
        if marker == _SOS:
            return frames == 1
        if marker in _SOF_OTHER or (marker == _APP1 and body.startswith(b"Exif")):
            return False
        if marker == _APP14:
            return False
        if marker in _SOF_PLAIN:
            if not body or body[0] != 8:  # sample precision
                return False
            frames += 1
        at += 2 + length
    return False


def decode_simple_jpeg(data: bytes) -> np.ndarray | None:
    """(H, W, 3) uint8 pixels of ``data`` when it is a plain JPEG (see the module doc), exactly
    as Pillow decodes it; ``None`` for anything Pillow should decode."""
    if not data.startswith(SOI) or not _is_plain(data):
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        limit = Image.MAX_IMAGE_PIXELS
        if colorspace not in ("YCbCr", "Gray") or (limit and height * width > limit):
            return None
        if colorspace == "Gray":
            gray = simplejpeg.decode_jpeg(data, colorspace="GRAY", strict=True)
            return np.repeat(gray.reshape(height, width, 1), 3, axis=2)
        return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
    except (ValueError, OSError, struct.error):
        return None
