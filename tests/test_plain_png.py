"""The Pillow-free decoder of plain PNGs must give Pillow's pixels, and hand every other PNG
(filtered rows, other modes, text chunks, bad CRCs, truncation) back to Pillow."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from fractals import FractalOptions
from ipmix_cli.bank.png import encode_bank_png, encode_rgb_png
from ipmix_cli.errors import DecodeError
from ipmix_cli.jobs.bank_job import BankSpec, generate_bank
from ipmix_cli.sources.decode import decode_image
from ipmix_cli.sources.plain_png import decode_plain_png


def pillow(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def split(png: bytes) -> list[tuple[bytes, bytes]]:
    """(tag, body) of every chunk."""
    out, pos = [], 8
    while pos < len(png):
        (n,) = struct.unpack_from(">I", png, pos)
        out.append((png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + n]))
        pos += 12 + n
    return out


def join(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunk(t, b) for t, b in chunks)


def test_a_whole_bank_decodes_to_pillows_pixels(tmp_path):
    bank = tmp_path / "bank"
    generate_bank(BankSpec(bank, 12, 3, FractalOptions(size=40, points=3000)), jobs=1)
    files = sorted((bank / "fractals").glob("*.png"))
    assert len(files) == 12
    for f in files:
        data = f.read_bytes()
        fast = decode_plain_png(data)
        assert fast is not None, f
        assert fast.dtype == np.uint8 and fast.flags.c_contiguous
        assert np.array_equal(fast, pillow(data)), f
        assert np.array_equal(decode_image(f), fast)


@pytest.mark.parametrize("shape", [(1, 1), (1, 37), (29, 1), (64, 48)])
@pytest.mark.parametrize("level", [0, 1, 6])
def test_odd_sizes_and_levels(shape, level):
    rng = np.random.default_rng(shape[0] * 100 + shape[1] + level)
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    for data in (encode_bank_png(image, level), encode_rgb_png(image, level)):
        assert np.array_equal(decode_plain_png(data), image)
        assert np.array_equal(pillow(data), image)


def test_several_idat_chunks_and_harmless_chunks():
    image = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    parts = split(encode_bank_png(image))
    (ihdr, idat, iend) = parts
    stream = idat[1]
    pieces = [(b"IDAT", stream[:7]), (b"IDAT", stream[7:50]), (b"IDAT", stream[50:])]
    data = join([ihdr, (b"gAMA", struct.pack(">I", 45455)), *pieces, iend])
    assert np.array_equal(decode_plain_png(data), image)
    assert np.array_equal(pillow(data), image)


def test_everything_else_goes_to_pillow(tmp_path):
    image = np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    plain = encode_bank_png(image)
    ihdr, idat, iend = split(plain)
    saved = io.BytesIO()
    Image.fromarray(image).save(saved, "PNG")  # Pillow filters its rows
    filtered = saved.getvalue()
    assert np.array_equal(pillow(filtered), image)
    gray = io.BytesIO()
    Image.fromarray(image[..., 0]).save(gray, "PNG")
    text = join([ihdr, (b"tEXt", b"Comment\x00hello"), idat, iend])
    bad_crc = plain[:-20] + bytes([plain[-20] ^ 1]) + plain[-19:]
    for data in (filtered, gray.getvalue(), text, bad_crc, plain[:-12], plain[:40], b"nope"):
        assert decode_plain_png(data) is None
    # and decode_image still gives Pillow's answer for them
    assert np.array_equal(decode_image(filtered), image)
    assert np.array_equal(decode_image(text), image)
    assert decode_image(gray.getvalue()).shape == (16, 16, 3)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(plain[:40])
    with pytest.raises(DecodeError, match="corrupt.png"):
        decode_image(corrupt)
