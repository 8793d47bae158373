"""What a fractal bank is made with: :class:`FractalOptions` and the constants that bound it.

The options are part of every image's identity (they are stored in each record and change the
output bytes), so they are validated and normalised once, here, to plain Python values: the
jitted pipeline can then trust them, and records and cache keys built from them are JSON-safe
and hash-stable whatever numeric types the caller used.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from fractals.errors import FractalError, describe

__all__ = [
    "BACKGROUNDS",
    "DEFAULT_MIN_FILL",
    "FRACTALS_RANGE",
    "INSTANCES_RANGE",
    "POINTS_RANGE",
    "SIZE_RANGE",
    "FractalOptions",
]

BACKGROUNDS = ("plasma", "black")  # the position is the code the jitted compositor receives
DEFAULT_MIN_FILL = 0.05

# Half-open ranges [low, high) of the integer options.
SIZE_RANGE = (8, 1 << 16)
POINTS_RANGE = (1, 1 << 40)
FRACTALS_RANGE = (1, 1 << 10)
INSTANCES_RANGE = (1, 1 << 40)  # instance numbers are packed into stream keys


@dataclass(frozen=True)
class FractalOptions:
    """How images are made. Every field changes the output bytes; all are recorded.

    ``min_fill`` defaults to 0.05: the SVD sampler's fill rate has a median near 0.2 at 256 px
    with a tail down to about 0.03, and the systems in that tail are the dots and thin curves that
    make poor mixing pictures. 0.05 removes that tail (the reference's own search cut-off) while
    rejecting only a few percent of systems, so the filter costs little time and does not bias
    the bank toward blobs the way FractalDB's 0.2 would.

    Invalid values raise :class:`~fractals.errors.FractalError` (a ``ValueError``).
    """

    size: int = 256
    points: int = 100_000
    background: str = "plasma"
    patch: bool = True
    fractals_per_image: int = 1
    instances: int = 1
    blur: bool = False
    flips: bool = True
    min_fill: float = DEFAULT_MIN_FILL

    def __post_init__(self) -> None:
        def integer(name: str, bounds: tuple[int, int]) -> None:
            value = getattr(self, name)
            low, high = bounds
            try:
                valid = not isinstance(value, bool) and int(value) == value and low <= value < high
            except (TypeError, ValueError, OverflowError):  # None, "abc", inf, arrays...
                valid = False
            if not valid:
                raise FractalError(
                    f"{name} must be an integer in [{low}, {high}), got {describe(value)}"
                )
            object.__setattr__(self, name, int(value))  # plain int: JSON-safe, hash-stable

        def flag(name: str) -> None:
            value = getattr(self, name)
            try:
                valid = value in (True, False)
            except (TypeError, ValueError):  # an array's truth value is ambiguous
                valid = False
            if not valid:
                raise FractalError(f"{name} must be a boolean, got {describe(value)}")
            object.__setattr__(self, name, bool(value))

        integer("size", SIZE_RANGE)
        integer("points", POINTS_RANGE)
        integer("fractals_per_image", FRACTALS_RANGE)
        integer("instances", INSTANCES_RANGE)
        for name in ("patch", "blur", "flips"):
            flag(name)
        if not isinstance(self.background, str) or self.background not in BACKGROUNDS:
            raise FractalError(
                f"background must be one of {BACKGROUNDS}, got {describe(self.background)}"
            )
        # a string or a bool would convert silently, hiding a mistyped manifest or call
        value = self.min_fill
        try:
            min_fill = math.nan if isinstance(value, (str, bytes, bool)) else float(value)
        except (TypeError, ValueError, OverflowError):
            min_fill = math.nan
        if not 0.0 <= min_fill <= 1.0:  # also rejects NaN
            raise FractalError(f"min_fill must be a number in [0, 1], got {describe(value)}")
        object.__setattr__(self, "min_fill", min_fill)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable; ``FractalOptions(**d)`` round-trips. (A comprehension rather than
        ``dataclasses.asdict``, which deep-copies and costs ~10 us on every record.)"""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
