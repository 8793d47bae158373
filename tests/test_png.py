"""The PNG encoders against Pillow's decoder (an independent implementation), and the bank's
PNG files: exact pixels, every level, independent of the number and kind of workers."""

from __future__ import annotations

import io
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fractals import FractalOptions, make_images
from ipmix_cli.bank.png import encode_bank_png, encode_rgb_png
from ipmix_cli.jobs.bank_job import BankSpec, generate_bank
from ipmix_cli.versions import byte_versions

ENCODERS = [encode_bank_png, encode_rgb_png]


def decode(data: bytes) -> np.ndarray:
    decoded = Image.open(io.BytesIO(data))
    decoded.load()  # checks the CRCs and the zlib stream
    assert decoded.format == "PNG" and decoded.mode == "RGB"
    return np.asarray(decoded)


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (7, 13), (32, 32), (129, 64)])
@pytest.mark.parametrize("level", range(10))
def test_pillow_decodes_the_exact_pixels(encoder, shape: tuple[int, int], level: int) -> None:
    rng = np.random.default_rng(shape[0] * 100 + level)
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    image[: shape[0] // 2] = image[0, 0]  # some flat rows too, like fractal backgrounds
    np.testing.assert_array_equal(decode(encoder(image, level)), image)


def test_bank_encoder_on_fractals_every_level() -> None:
    images, _ = make_images(3, range(4), FractalOptions(size=64, points=5000))
    sizes = []
    for level in range(10):
        for image in images:
            data = encode_bank_png(image, level)
            np.testing.assert_array_equal(decode(data), image)
        sizes.append(len(encode_bank_png(images[0], level)))
    assert sizes[0] > 64 * 64 * 3  # level 0 stores
    assert max(sizes[1:]) < sizes[0] * 0.6 and sizes[9] <= sizes[1]


@pytest.mark.parametrize("encoder", ENCODERS)
def test_deterministic_and_level_matters(encoder) -> None:
    image = np.tile(np.arange(64, dtype=np.uint8)[:, None, None], (1, 64, 3))
    assert encoder(image, 1) == encoder(image.copy(), 1)
    assert len(encoder(image, 9)) < len(encoder(image, 0))


def test_the_shard_encoder_still_uses_zlib() -> None:
    """``encode_rgb_png`` is the shard codec's: its bytes (pinned there) must not move."""
    image = np.tile(np.arange(48, dtype=np.uint8)[:, None, None], (5, 48, 3))
    data = encode_rgb_png(image, 6)
    length = int.from_bytes(data[33:37], "big")
    assert data[37:41] == b"IDAT"
    rows = np.zeros((image.shape[0], image.shape[1] * 3 + 1), np.uint8)
    rows[:, 1:] = image.reshape(image.shape[0], -1)
    assert data[41 : 41 + length] == zlib.compress(rows.tobytes(), 6)


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32)])
def test_rejects_non_rgb_uint8(encoder, bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8"):
        encoder(bad)


def test_bank_level_out_of_range() -> None:
    with pytest.raises(ValueError, match="0..9"):
        encode_bank_png(np.zeros((2, 2, 3), np.uint8), 10)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_bank_files_decode_exactly_and_do_not_depend_on_workers(tmp_path: Path) -> None:
    """130 images (three chunks, the last one short) at 33 px: one job (render and encode
    pipelined in this process), two threads, two loky processes (which stage the files
    themselves): the same bytes, and every PNG decodes to the renderer's pixels."""
    options = FractalOptions(size=33, points=3000)
    runs = {
        "one": {"jobs": 1},
        "threads": {"jobs": 2, "backend": "threads"},
        "loky": {"jobs": 2, "backend": "loky"},
    }
    trees = {}
    for name, how in runs.items():
        spec = BankSpec(out=tmp_path / name, count=130, seed=8, options=options)
        generate_bank(spec, **how)
        trees[name] = tree_bytes(tmp_path / name)
    assert trees["one"] == trees["threads"] == trees["loky"]
    expected, _ = make_images(8, range(130), options)
    manifest = json.loads(trees["one"]["manifest.json"])
    assert manifest["environment"]["deflate"] == byte_versions()["deflate"]
    assert len(manifest["records"]) == 130
    for index, record in enumerate(manifest["records"]):
        np.testing.assert_array_equal(decode(trees["one"][record["file"]]), expected[index])


def test_bank_compression_levels(tmp_path: Path) -> None:
    options = FractalOptions(size=24, points=2000)
    expected, _ = make_images(2, range(3), options)
    sizes = {}
    for level in (0, 1, 9):
        spec = BankSpec(
            out=tmp_path / str(level), count=3, seed=2, options=options, png_compress_level=level
        )
        generate_bank(spec, jobs=1)
        files = sorted((tmp_path / str(level) / "fractals").glob("*.png"))
        for path, image in zip(files, expected, strict=True):
            np.testing.assert_array_equal(decode(path.read_bytes()), image)
        sizes[level] = sum(p.stat().st_size for p in files)
    assert sizes[0] > 3 * 24 * 24 * 3 > sizes[1] >= sizes[9]
