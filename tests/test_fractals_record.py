"""Records from files: a damaged or hostile record, and bad arguments, are one-line
FractalErrors; ``render_record`` never lets a KeyError, TypeError or MemoryError escape."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable

import numpy as np
import pytest

from fractals import (
    FractalError,
    FractalOptions,
    make_image,
    record,
    render_record,
)

SMALL = FractalOptions(size=32, points=3000)
# ---------------------------------------------------------------------------------------------
# user errors: FractalError, one line, never a KeyError / TypeError / IndexError escaping


@pytest.mark.parametrize("index", [-1, 2**53, 1.5, "3", None, True, math.nan])
def test_bad_index_is_a_fractal_error(index: object) -> None:
    with pytest.raises(FractalError, match="index must be"):
        make_image(0, index, SMALL)


def test_seed_types() -> None:
    with pytest.raises(FractalError, match="seed must be an integer"):
        make_image(1.5, 0, SMALL)
    img, rec = make_image(np.int64(5), 3, SMALL)  # numpy integers are integers
    img2, rec2 = make_image(5, 3, SMALL)
    assert np.array_equal(img, img2) and rec == rec2 and type(rec["seed"]) is int


_LAYERED = FractalOptions(size=24, points=800, fractals_per_image=2)


@pytest.fixture(scope="module")
def layered_record() -> dict:
    return json.loads(json.dumps(make_image(3, 1, _LAYERED)[1]))


def _set(path: tuple, value: object) -> Callable[[dict], object]:
    def damage(rec: dict) -> dict:
        target = rec
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return rec

    return damage


def _drop(path: tuple) -> Callable[[dict], object]:
    def damage(rec: dict) -> dict:
        target = rec
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
        return rec

    return damage


_MAP = [[0.5, 0.0, 0.1], [0.0, 0.5, -0.1]]
DAMAGED = {
    "not a mapping": (lambda rec: [rec], "must be a mapping"),
    "no format": (_drop(("format",)), "no 'format'"),
    "another format": (_set(("format",), "ipmix-fractal/2"), "format 'ipmix-fractal/2'"),
    "no options": (_drop(("options",)), "missing 'options'"),
    "options not a mapping": (_set(("options",), [1, 2]), "'options' is not a mapping"),
    "option missing": (_drop(("options", "size")), "options: missing 'size'"),
    "unknown option": (_set(("options", "colour"), "red"), "unknown option 'colour'"),
    "size as a string": (_set(("options", "size"), "24"), "size must be an integer"),
    "size absurd": (_set(("options", "size"), 10**9), "size must be an integer"),
    "size over the render limit": (_set(("options", "size"), 60000), r"size .*\[1, 8192\]"),
    "points absurd": (_set(("options", "points"), 10**15), "points must be an integer"),
    "points over the render limit": (_set(("options", "points"), 2**33), r"points .*\[1, 4294"),
    "min_fill None": (_set(("options", "min_fill"), None), "min_fill must be a number"),
    "no layers": (_drop(("layers",)), "missing 'layers'"),
    "layers None": (_set(("layers",), None), "'layers' is not a list"),
    "layer count": (lambda rec: _set(("layers",), rec["layers"][:1])(rec), "1 layers, but"),
    "layer not a mapping": (_set(("layers", 0), "layer"), "layer 0 is not a mapping"),
    "no system": (_drop(("layers", 1, "system")), "layer 1: missing 'system'"),
    "system None": (_set(("layers", 0, "system"), None), "'system' must be 1 to 255 maps"),
    "system flat": (_set(("layers", 0, "system"), [0.5] * 6), "map 0 is 0.5"),
    "system empty": (_set(("layers", 0, "system"), []), r"\(got 0 maps\)"),
    "system too many maps": (_set(("layers", 0, "system"), [_MAP] * 256), "got 256 maps"),
    "system row short": (_set(("layers", 0, "system", 0, 1), [0.5, 0.0]), "map 0 is"),
    "system string": (_set(("layers", 0, "system", 0, 0, 0), "0.5"), "holds '0.5', not a"),
    "system bool": (_set(("layers", 0, "system", 0, 0, 0), True), "holds True, not a number"),
    "system None entry": (_set(("layers", 0, "system", 1, 1, 2), None), "holds None, not"),
    "system NaN": (_set(("layers", 0, "system", 0, 0, 0), math.nan), "NaN or an infinity"),
    "system inf": (_set(("layers", 1, "system", 0, 1, 2), -math.inf), "NaN or an infinity"),
    "system huge int": (_set(("layers", 0, "system", 0, 0, 2), 10**400), "out of float range"),
    "no render key": (_drop(("layers", 0, "render_key")), "layer 0: missing 'render_key'"),
    "render key not hex": (_set(("layers", 0, "render_key"), "zz" * 8), "16-digit hex string"),
    "render key short": (_set(("layers", 1, "render_key"), "abc"), "layer 1: 'render_key' is"),
    "render key 0x": (_set(("layers", 0, "render_key"), "0x" + "f" * 14), "16-digit hex"),
    "render key int": (_set(("layers", 0, "render_key"), 12345), r"hex string \(got 12345\)"),
    "no look key": (_drop(("look_key",)), "record: missing 'look_key'"),
    "look key None": (_set(("look_key",), None), "'look_key' is not a 16-digit hex string"),
    "no box": (_drop(("layers", 0, "box")), "layer 0: missing 'box'"),
    "box None when layered": (_set(("layers", 0, "box"), None), "'box' must be"),
    "box short": (_set(("layers", 0, "box"), [0.5, 0.5]), "'box' must be"),
    "box NaN": (_set(("layers", 1, "box", 0), math.nan), "'box' must be"),
    "box huge": (_set(("layers", 1, "box", 2), 1e300), "'box' must be"),
    "box string": (_set(("layers", 0, "box", 1), "0.5"), "'box' must be"),
}


@pytest.mark.parametrize("name", list(DAMAGED))
def test_render_record_rejects_damaged_records(layered_record: dict, name: str) -> None:
    damage, message = DAMAGED[name]
    rec = damage(copy.deepcopy(layered_record))
    with pytest.raises(FractalError, match=message) as info:
        render_record(rec)
    assert "\n" not in str(info.value)


def test_render_record_rejects_a_box_on_a_one_fractal_record() -> None:
    _, rec = make_image(3, 1, SMALL)
    rec["layers"][0]["box"] = [0.5, 0.5, 0.5]
    with pytest.raises(FractalError, match="'box' must be null"):
        render_record(rec)


@pytest.mark.parametrize(
    ("size", "points"),
    [(10**9, None), (0, None), ("64", None), (True, None), (2.5, None), (None, 10**15), (None, 0)],
)
def test_render_record_bounds_its_arguments(layered_record: dict, size, points) -> None:
    with pytest.raises(FractalError, match="must be an integer in"):
        render_record(layered_record, size=size, points=points)


def test_render_record_bounds_the_layer_buffers(layered_record: dict) -> None:
    # 8 full-size layers at the largest size: 8 * 8192**2 cells, refused before allocating
    rec = copy.deepcopy(layered_record)
    rec["options"]["fractals_per_image"] = 8
    rec["layers"] = [dict(rec["layers"][0], box=[0.5, 0.5, 1.0]) for _ in range(8)]
    with pytest.raises(FractalError, match="layer pixels"):
        render_record(rec, size=record.MAX_RENDER_SIZE)


def test_render_record_accepts_numeric_variants(layered_record: dict) -> None:
    # what JSON readers and numpy users legitimately produce renders the same bytes
    reference = render_record(layered_record)
    rec = copy.deepcopy(layered_record)
    rec["layers"][0]["system"] = np.array(rec["layers"][0]["system"])
    rec["layers"][1]["render_key"] = rec["layers"][1]["render_key"].upper()
    rec["options"]["size"] = np.int64(rec["options"]["size"])
    assert np.array_equal(render_record(rec), reference)


_FUZZ_VALUES = [
    None,
    "x",
    "ffffffffffffffff",
    [],
    {},
    [None],
    [[0.5, 0.0, 0.0]] * 2,
    -1,
    0,
    1,
    3,
    10**12,
    2**64,
    1e308,
    -1e308,
    math.nan,
    math.inf,
    True,
    0.5,
    "0.5",
]


def _paths(node: object, prefix: tuple = ()) -> list[tuple]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for k, value in enumerate(node):
            found += _paths(value, (*prefix, k))
    return found


def test_render_record_fuzz_raises_only_fractal_errors(layered_record: dict) -> None:
    """Random damage anywhere in a record: each render either works or raises FractalError
    (a crash in the unchecked nopython code would take the whole test process down)."""
    generator = np.random.default_rng(0)
    paths = _paths(layered_record)
    outcomes = {"rendered": 0, "refused": 0}
    for _ in range(400):
        rec = copy.deepcopy(layered_record)
        for _ in range(int(generator.integers(1, 3))):
            path = paths[int(generator.integers(len(paths)))]
            try:
                if generator.random() < 0.2:
                    _drop(path)(rec)
                else:
                    _set(path, _FUZZ_VALUES[int(generator.integers(len(_FUZZ_VALUES)))])(rec)
            except (KeyError, IndexError, TypeError):
                pass  # an earlier damage removed or replaced the parent
        try:
            img = render_record(rec)
        except FractalError as error:
            assert "\n" not in str(error)
            outcomes["refused"] += 1
        else:
            assert img.dtype == np.uint8 and img.ndim == 3
            outcomes["rendered"] += 1
    assert outcomes["rendered"] > 20 and outcomes["refused"] > 100, outcomes
