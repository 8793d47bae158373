"""A header check of one image file, without decoding it: format, displayed size, whether it
looks complete.

A folder scan must know every image's size before any work (to plan, and to refuse what the
pre-transform cannot take), but decoding 1.28 million JPEGs to learn it takes an hour, and the
workers decode each image anyway. So the scan reads what a file says about itself:

* JPEG: the frame header (SOF) for the size, the EXIF orientation (IFD0 tag 0x0112) because
  ``decode_image`` applies it (orientations 5-8 swap height and width), and the last bytes for
  the end-of-image marker, which catches the common breakage, a truncated download.
* PNG: the IHDR chunk for the size, and the IEND chunk at the end.
* Anything else (BMP, GIF, TIFF, WebP...): Pillow's lazy open, which reads the header only.

A size over the decoder's decompression-bomb limit (:func:`pixel_limit`) is refused here: the
header says it, so the scan can, where the worker's decode would fail only once work started.

A JPEG or PNG whose end marker is missing is not necessarily broken (some writers append
padding after it): :func:`probe_image` then decodes it fully to decide, so only odd files pay for
a decode in the scan. What the header check cannot see (corrupt data in the middle of a file) is
found when the worker decodes the image, and follows ``--on-error`` from there.
"""

from __future__ import annotations

import os
import struct
import warnings
from dataclasses import dataclass

from ipmix_cli.errors import DecodeError
from ipmix_cli.fs.regular import NotRegularFileError, open_regular
from ipmix_cli.fs.user_cache import file_status

HEAD_BYTES = 64 * 1024  # JPEG headers (EXIF thumbnails included) nearly always fit
TAIL_BYTES = 64
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


@dataclass(frozen=True)
class ImageHeader:
    """What the scan learns of one file: its format, displayed (height, width), its bytes and
    modification time (the default fingerprint), and whether it was decoded to decide."""

    format: str
    height: int
    width: int
    nbytes: int
    mtime_ns: int
    decoded: bool = False
    status: tuple[int, ...] = ()
    """The file's ``fs.user_cache.file_status`` when it was checked."""


def pixel_limit() -> int | None:
    """The most pixels :func:`~ipmix_cli.sources.decode.decode_image` takes: Pillow's hard
    decompression-bomb limit, ``2 * Image.MAX_IMAGE_PIXELS`` (beyond ``MAX_IMAGE_PIXELS``
    Pillow only warns, and the decoder ignores that warning); ``None`` when a caller switched
    the limit off. Read each time, so the scan follows whatever the decoder follows."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    return None if limit is None else 2 * int(limit)


def too_large(height: int, width: int, limit: int | None) -> str | None:
    """Why an image of ``height`` x ``width`` cannot be decoded under ``limit`` pixels
    (:func:`pixel_limit`), or ``None`` when it can. Counted as Pillow counts (a zero side as
    one), so the scan refuses exactly what the decoder would."""
    pixels = max(1, height) * max(1, width)
    if limit is None or pixels <= limit:
        return None
    return (
        f"image too large: its header declares {height}x{width} = {pixels} pixels, over the "
        f"decoder's limit of {limit} pixels (a decompression bomb, or a picture too big to use)"
    )


class _UnparsedError(Exception):
    """The fast parser does not understand this file; Pillow decides."""


def _exif_orientation(app1: bytes) -> int:
    """Orientation tag of an APP1 EXIF payload (1 when absent or unreadable)."""
    if not app1.startswith(b"Exif\x00\x00") or len(app1) < 14:
        return 1
    tiff = app1[6:]
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        return 1
    try:
        (ifd,) = struct.unpack_from(order + "I", tiff, 4)
        (count,) = struct.unpack_from(order + "H", tiff, ifd)
        for k in range(count):
            tag, kind, _, value = struct.unpack_from(order + "HHI4s", tiff, ifd + 2 + 12 * k)
            if tag == 0x0112 and kind == 3:  # SHORT, stored in the first two value bytes
                return struct.unpack_from(order + "H", value)[0]
    except struct.error:
        return 1
    return 1


def _jpeg_size(head: bytes) -> tuple[int, int]:
    """(height, width) as displayed, from the markers before the first scan."""
    pos, orientation = 2, 1
    while pos + 4 <= len(head):
        if head[pos] != 0xFF:
            raise _UnparsedError
        marker = head[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", head, pos + 2)
        if length < 2:
            raise _UnparsedError
        if marker == 0xE1 and orientation == 1:
            orientation = _exif_orientation(head[pos + 4 : pos + 2 + length])
        if marker in _SOF_MARKERS:
            if pos + 9 > len(head):
                raise _UnparsedError
            height, width = struct.unpack_from(">HH", head, pos + 5)
            if height == 0 or width == 0:
                raise _UnparsedError  # DNL-sized or broken: let Pillow judge
            if orientation in _SWAPPING_ORIENTATIONS:
                return width, height
            return height, width
        if marker == 0xDA:  # start of scan before any frame header
            raise _UnparsedError
        pos += 2 + length
    raise _UnparsedError


def _png_size(head: bytes) -> tuple[int, int]:
    if len(head) < 24 or head[12:16] != b"IHDR":
        raise _UnparsedError
    width, height = struct.unpack_from(">II", head, 16)
    if height == 0 or width == 0:
        raise _UnparsedError
    return height, width


def _pillow_size(path: str) -> tuple[str, int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow's open checks the bomb limit itself: its warning is only advisory (the
            # decoder ignores it too), its error is answered below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                fmt = (img.format or "image").lower()
                orientation = img.getexif().get(0x0112, 1)
    except Image.DecompressionBombError as error:
        raise DecodeError(path, f"image too large ({error})") from None
    except UnidentifiedImageError:
        raise DecodeError(path, "not an image file (Pillow cannot identify it)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise DecodeError(path, f"corrupt image header ({error})") from None
    if orientation in _SWAPPING_ORIENTATIONS:
        height, width = width, height
    return fmt, int(height), int(width)


def _decoded_size(path: str) -> tuple[int, int]:
    from ipmix_cli.sources.decode import decode_image

    image = decode_image(path)
    return int(image.shape[0]), int(image.shape[1])


def probe_image(path: str) -> ImageHeader:
    """Check one file's header (see the module doc); :class:`DecodeError` names what is wrong."""
    try:
        fd = open_regular(path)
    except FileNotFoundError:
        raise DecodeError(path, "no such file") from None
    except NotRegularFileError as error:
        raise DecodeError(path, f"{error.kind}, not an image file") from None
    except OSError as error:
        raise DecodeError(path, f"cannot read file ({error.strerror or error})") from None
    try:
        st = os.fstat(fd)
        if st.st_size == 0:
            raise DecodeError(path, "empty file (0 bytes), not an image")
        head = os.read(fd, HEAD_BYTES)
        tail = (
            head[-TAIL_BYTES:]
            if st.st_size <= len(head)
            else os.pread(fd, TAIL_BYTES, max(0, st.st_size - TAIL_BYTES))
        )
    except OSError as error:
        raise DecodeError(path, f"cannot read file ({error.strerror or error})") from None
    finally:
        os.close(fd)
    complete = True
    try:
        if head.startswith(b"\xff\xd8\xff"):
            fmt = "jpeg"
            height, width = _jpeg_size(head)
            complete = b"\xff\xd9" in tail
        elif head.startswith(_PNG_SIGNATURE):
            fmt = "png"
            height, width = _png_size(head)
            complete = tail.endswith(_PNG_IEND)
        else:
            raise _UnparsedError
    except _UnparsedError:
        fmt, height, width = _pillow_size(path)
    problem = too_large(height, width, pixel_limit())
    if problem is not None:  # before any decode: the header alone says it cannot be used
        raise DecodeError(path, problem)
    decoded = False
    if not complete:  # no end marker: truncated, or padded by its writer; a decode decides
        height, width = _decoded_size(path)
        decoded = True
    return ImageHeader(
        fmt, height, width, int(st.st_size), int(st.st_mtime_ns), decoded, file_status(st)
    )
