"""The plain PNGs ipmix writes itself (8-bit RGB, no interlace, every row filter type 0),
decoded without Pillow.

A fractal bank is such files (``ipmix_cli.bank.png``), and loading it was a tenth of a whole
32 px CIFAR job: Pillow inflates with zlib, then unfilters row by row. Here the IDAT stream is
inflated by libdeflate (~3x zlib's speed, one call) and, since no row is filtered, the pixels
are the inflated rows minus their filter byte. PNG is lossless, so the pixels are the ones
Pillow gives, byte for byte (the tests compare the two on banks and on hand-made files).

Anything else (another colour type or depth, a filtered row, a palette, transparency, text
chunks, which may carry EXIF orientation, a bad CRC, a truncated file...) returns ``None`` and
the caller decodes with Pillow, which also words the errors.
"""

from __future__ import annotations

import struct

import deflate
import numpy as np
from PIL import Image

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PLAIN_CHUNKS = frozenset({b"IHDR", b"IDAT", b"IEND", b"pHYs", b"tIME", b"sRGB", b"gAMA", b"cHRM"})
"""Chunks that leave the pixels as stored (Pillow's RGB output ignores gamma and chromaticity);
a file with any other chunk goes to Pillow."""


def decode_plain_png(data: bytes) -> np.ndarray | None:
    """(H, W, 3) uint8 pixels of ``data`` if it is a plain RGB PNG with unfiltered rows and
    sound CRCs; ``None`` otherwise (decode it with Pillow)."""
    if not data.startswith(SIGNATURE):
        return None
    view = memoryview(data)
    pos, size = len(SIGNATURE), len(data)
    header: tuple[int, ...] | None = None
    parts: list[memoryview] = []
    ended = False
    while pos + 12 <= size:
        (length,) = struct.unpack_from(">I", data, pos)
        tag = bytes(view[pos + 4 : pos + 8])
        end = pos + 12 + length
        if end > size or tag not in _PLAIN_CHUNKS:
            return None
        body = view[pos + 8 : pos + 8 + length]
        crc = deflate.crc32(body, deflate.crc32(tag)) & 0xFFFFFFFF
        if crc != struct.unpack_from(">I", data, end - 4)[0]:
            return None
        if tag == b"IHDR":
            if length != 13 or header is not None:
                return None
            header = struct.unpack(">IIBBBBB", body)
        elif tag == b"IDAT":
            parts.append(body)
        elif tag == b"IEND":
            ended = True
            break
        pos = end
    if header is None or not parts or not ended:
        return None
    width, height, depth, colour, compression, filtering, interlace = header
    if (depth, colour, compression, filtering, interlace) != (8, 2, 0, 0, 0):
        return None
    pixels, limit = width * height, Image.MAX_IMAGE_PIXELS  # limit None: switched off
    if pixels <= 0 or (limit is not None and pixels > 2 * limit):
        return None  # over Pillow's bomb limit: Pillow decides (and refuses)
    stride = width * 3 + 1
    stream = parts[0] if len(parts) == 1 else b"".join(parts)
    try:
        rows = deflate.zlib_decompress(stream, height * stride)
    except (deflate.DeflateError, ValueError, MemoryError):
        return None
    if len(rows) != height * stride:
        return None
    table = np.frombuffer(rows, dtype=np.uint8).reshape(height, stride)
    if table[:, 0].any():  # a filtered row: Pillow unfilters
        return None
    return np.ascontiguousarray(table[:, 1:]).reshape(height, width, 3)
