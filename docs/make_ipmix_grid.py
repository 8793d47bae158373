"""Draw docs/img/ipmix-grid.png: what IPMix does to an image, chain by chain.

Each row is one sample: the pre-transformed image x, the mixing picture p (a fractal), the k
chains (labelled image or patch chain and their ops) and the result. The engine's trace
supplies the chain images, so the picture shows exactly what the kernel computed.

Run from the repository root: ``python docs/make_ipmix_grid.py`` (a few seconds; uses the
fractal generator for p, and a procedurally drawn landscape for x since no data set ships
with the repository).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ipmix_cli.augment.config import IPMixConfig
from ipmix_cli.augment.engine import augment_batch_traced
from ipmix_cli.augment.mixing_set import MixingSet
from ipmix_cli.augment.ops.dispatch import OP_NAMES
from ipmix_cli.augment.patch import OPF_OP, OPF_RULE, OPF_SIZE, OPF_SOURCE
from ipmix_cli.augment.pixel_rules import RULE_NAMES
from ipmix_cli.augment.pretransform import PRE_PICK, PRE_PLEFT, PRE_PTOP

OUT = Path(__file__).resolve().parent / "img" / "ipmix-grid.png"
CELL = 112
LABEL = 26


def landscape(size: int, seed: int) -> np.ndarray:
    """A small synthetic photo: sky gradient, sun, two hill ridges, a house."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    sky = np.stack([0.35 + 0.3 * yy, 0.55 + 0.3 * yy, 0.95 - 0.1 * yy], axis=-1)
    img = sky.copy()
    cx, cy = rng.uniform(0.2, 0.8), rng.uniform(0.12, 0.3)
    img[(xx - cx) ** 2 + (yy - cy) ** 2 < 0.008] = (1.0, 0.85, 0.3)
    for k, colour in enumerate(((0.3, 0.55, 0.25), (0.18, 0.4, 0.15))):
        ridge = 0.55 + 0.1 * k + 0.06 * np.sin(xx * rng.uniform(4, 9) + rng.uniform(0, 6))
        img[yy > ridge] = np.array(colour) * (0.8 + 0.4 * yy[yy > ridge, None])
    hx = rng.uniform(0.2, 0.6)
    house = (xx > hx) & (xx < hx + 0.22) & (yy > 0.6) & (yy < 0.78)
    img[house] = (0.8, 0.75, 0.65)
    roof = (yy > 0.5) & (yy <= 0.6) & (np.abs(xx - hx - 0.11) < (yy - 0.5) * 1.3)
    img[roof] = (0.6, 0.15, 0.1)
    img += rng.normal(0, 0.02, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def mixing_pictures(size: int, count: int) -> list[np.ndarray]:
    try:
        from fractals import FractalOptions, make_image

        options = FractalOptions(size=size, points=40_000)
        return [make_image(7, i, options)[0] for i in range(count)]
    except Exception:  # the fractal generator is optional for this picture
        rng = np.random.default_rng(3)
        return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(count)]


def chain_label(kind: int, ops: np.ndarray, n_ops: int) -> str:
    if n_ops == 0:
        return "no op (= x)"
    names = []
    for j in range(n_ops):
        r = ops[j]
        if kind == 0:
            names.append(OP_NAMES[int(r[OPF_OP])])
        else:
            src = "p" if r[OPF_SOURCE] == 0 else "op(x)"
            names.append(f"{RULE_NAMES[int(r[OPF_RULE])]}{int(r[OPF_SIZE])}<{src}")
    return ("img: " if kind == 0 else "patch: ") + ", ".join(names)


def cell(img: np.ndarray) -> Image.Image:
    return Image.fromarray(img).resize((CELL, CELL), Image.Resampling.NEAREST)


def main() -> None:
    rows = []
    for preset, size, seeds in (("cifar", 32, (0, 5)), ("imagenet", 224, (1, 4))):
        config = IPMixConfig.preset(preset, pre="none")
        mixing = MixingSet.from_pictures(mixing_pictures(config.mixing_side, 6), config)
        images = np.stack([landscape(size, s) for s in seeds])
        out, tr = augment_batch_traced(images, np.array(seeds), 0, mixing, config, 2024)
        for n in range(len(seeds)):
            pic = mixing.picture(int(tr.pre[n, PRE_PICK]))
            top, left = int(tr.pre[n, PRE_PTOP]), int(tr.pre[n, PRE_PLEFT])
            p = pic[top : top + size, left : left + size]
            tiles = [(images[n], f"x ({preset})"), (p, "mixing picture p")]
            for i in range(config.k):
                label = chain_label(int(tr.kinds[n, 0, i]), tr.ops[n, 0, i], int(tr.n_ops[n, 0, i]))
                tiles.append((tr.chains[n, 0, i], f"w={tr.weights[n, 0, i]:.2f} {label}"))
            tiles.append((out[n], f"result, m={tr.m[n, 0]:.2f}"))
            rows.append(tiles)

    ncol = len(rows[0])
    sheet = Image.new("RGB", (ncol * (CELL + 4), len(rows) * (CELL + LABEL + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, tiles in enumerate(rows):
        for c, (img, text) in enumerate(tiles):
            x0, y0 = c * (CELL + 4), r * (CELL + LABEL + 4)
            sheet.paste(cell(img), (x0, y0))
            words, line, lines = text.split(" "), "", []
            for word in words:  # wrap the label to the cell width
                trial = f"{line} {word}".strip()
                if draw.textlength(trial) > CELL and line:
                    lines.append(line)
                    line = word
                else:
                    line = trial
            lines.append(line)
            draw.multiline_text((x0, y0 + CELL + 1), "\n".join(lines[:2]), fill="black", spacing=1)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    sheet = sheet.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    sheet.save(OUT, optimize=True)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
