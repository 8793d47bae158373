"""The IPMix engine: image-level ops, pixel-level mixing rules, patch mixing and the recipe."""

from pathlib import Path

import fractals.rng
from fractals.numba_cache import drop_stale_caches

drop_stale_caches(Path(__file__).resolve().parent, [Path(fractals.rng.__file__).resolve()])
