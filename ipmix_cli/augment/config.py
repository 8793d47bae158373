"""IPMix hyper-parameters as one frozen, validated, serialisable object.

Every worker process and every shard manifest needs the exact recipe that produced its images,
so the configuration is a frozen dataclass that round-trips through a plain JSON-able dict
(``to_dict`` / ``from_dict``). Validation happens once, at construction, with messages that
name the field, so a bad option fails before any image is touched.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ipmix_cli.errors import ConfigError

__all__ = ["ConfigError", "IPMixConfig", "PRESETS", "RESIZE_POLICIES", "default_mixing_short_side"]

PATCH_SOURCES = ("mixing", "mixed")
PATCH_OVERFLOWS = ("wrap", "clip")
PRE_TRANSFORMS = ("cifar", "imagenet", "none")
RESIZE_POLICIES = ("center", "exact")


def default_mixing_short_side(size: tuple[int, int]) -> int:
    """Shorter side the mixing pictures are resized to before their random crop.

    The reference uses Resize(36) for 32 px output and Resize(256) for 224 px output. Both are
    ``floor(min(H, W) * 8 / 7)`` (32 -> 36, 224 -> 256), so that one rule covers both presets
    and extends to other sizes with the same margin for the random crop.
    """
    return (min(size) * 8) // 7


@dataclass(frozen=True)
class IPMixConfig:
    """The IPMix recipe's hyper-parameters (see docs/ipmix.md for each field).

    Build one with :meth:`preset` rather than the constructor, so the defaults match the
    reference for the data set at hand: ``IPMixConfig.preset("cifar", jsd=True)``.
    """

    k: int = 3
    """Number of chains mixed together."""
    t: int = 3
    """Maximum number of operations per chain (each chain draws randint(0, t))."""
    beta: float = 3.0
    """Shape of the pixel-mixing weights of the add and multiply rules."""
    severity: float = 3.0
    """Image-op strength: each op call draws its level L = U(0.1, severity)."""
    all_ops: bool = False
    """Use all 15 image ops instead of the default 10 (adds the ImageNet-C-overlapping ones)."""
    patch_sizes: tuple[int, ...] = (4, 8, 16, 32)
    """Patch side lengths, chosen uniformly per patch op (clamped to the image, see docs)."""
    patch_source: str = "mixing"
    """'mixing': patches always come from the mixing picture (CIFAR reference);
    'mixed': mixing picture or an image-op'd copy of x, 50/50 (ImageNet reference)."""
    patch_overflow: str = "wrap"
    """'wrap': the reference's truncate-and-cast (values outside [0, 255] wrap mod 256);
    'clip': clip to [0, 255] instead (still truncating)."""
    pre: str = "cifar"
    """Pre-transform: 'cifar' (flip + padded crop), 'imagenet' (RandomResizedCrop + flip),
    'none' (images are used as given). 'cifar' and 'none' apply ``resize`` first."""
    size: tuple[int, int] = (32, 32)
    """Output (H, W). With 'cifar' and 'none', inputs of another size go through ``resize``."""
    jsd: bool = False
    """Emit [clean, view1, view2] per sample (the reference's training default) instead of
    one view."""
    crop_padding: int = 4
    """Zero padding of the 'cifar' pre-transform's random crop."""
    mixing_short_side: int | None = None
    """Shorter side of the prepared mixing pictures; None: floor(min(size) * 8 / 7)."""
    resize: str = "center"
    """Size policy of 'cifar' and 'none' for an input that is not ``size``: 'center' resizes
    it (shorter side to ``resize_side``, Pillow BILINEAR) and centre-crops it to ``size``
    before the pre-transform; 'exact' refuses it. Ignored by 'imagenet' (RandomResizedCrop
    takes any size). An input of the output size is never resized."""
    resize_side: int | None = None
    """Shorter side of the 'center' resize and of the clean export (``clean_images``, which
    resizes whatever ``pre`` and ``resize``); None: min(size). Where the resized image is
    smaller than ``size`` on an axis it gets zero borders there, as torchvision's CenterCrop
    pads."""

    def __post_init__(self) -> None:
        self._validate()

    # ----------------------------------------------------------------------------- validation
    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def _validate(self) -> None:
        self._set("k", _as_int("k", self.k, low=1, high=64))
        self._set("t", _as_int("t", self.t, low=0, high=64))
        self._set("beta", _as_float("beta", self.beta, positive=True))
        severity = _as_float("severity", self.severity, positive=True)
        if severity < 0.1:
            raise ConfigError(
                f"severity must be >= 0.1 (levels are drawn from U(0.1, severity)), got {severity}"
            )
        self._set("severity", severity)
        self._set("all_ops", _as_bool("all_ops", self.all_ops))
        self._set("jsd", _as_bool("jsd", self.jsd))
        sizes = self.patch_sizes
        if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__"):
            raise ConfigError(f"patch_sizes must be a list of integers, got {sizes!r}")
        sizes = tuple(_as_int("patch_sizes entry", s, low=2, high=1 << 16) for s in sizes)
        if not sizes:
            raise ConfigError("patch_sizes must not be empty")
        self._set("patch_sizes", sizes)
        self._set("patch_source", _as_choice("patch_source", self.patch_source, PATCH_SOURCES))
        self._set(
            "patch_overflow", _as_choice("patch_overflow", self.patch_overflow, PATCH_OVERFLOWS)
        )
        self._set("pre", _as_choice("pre", self.pre, PRE_TRANSFORMS))
        size = self.size
        if isinstance(size, int) and not isinstance(size, bool):
            size = (size, size)
        if isinstance(size, (str, bytes)) or not hasattr(size, "__len__") or len(size) != 2:
            raise ConfigError(f"size must be (height, width) or one integer, got {self.size!r}")
        self._set("size", tuple(_as_int("size", s, low=2, high=1 << 15) for s in size))
        self._set("crop_padding", _as_int("crop_padding", self.crop_padding, low=0, high=1 << 15))
        if self.mixing_short_side is not None:
            self._set(
                "mixing_short_side",
                _as_int("mixing_short_side", self.mixing_short_side, low=1, high=1 << 15),
            )
        self._set("resize", _as_choice("resize", self.resize, RESIZE_POLICIES))
        if self.resize_side is not None:
            side = _as_int("resize_side", self.resize_side, low=1, high=1 << 15)
            if side < min(self.size):
                # every image would be shrunk below the crop and padded with black: never
                # what a user meant (torchvision's Resize + CenterCrop would do it silently)
                raise ConfigError(
                    f"resize_side {side} is smaller than the output's shorter side "
                    f"{min(self.size)}: the centre crop would pad every image with black; "
                    f"use at least {min(self.size)}"
                )
            self._set("resize_side", side)

    # ------------------------------------------------------------------------------- helpers
    @property
    def n_ops(self) -> int:
        """How many image ops the recipe draws from (10 by default, 15 with ``all_ops``)."""
        from ipmix_cli.augment.ops.dispatch import N_ALL_OPS, N_DEFAULT_OPS

        return N_ALL_OPS if self.all_ops else N_DEFAULT_OPS

    @property
    def mixing_side(self) -> int:
        """The shorter side mixing pictures are resized to (explicit or the 8/7 rule)."""
        if self.mixing_short_side is not None:
            return self.mixing_short_side
        return default_mixing_short_side(self.size)

    @property
    def accepts_any_size(self) -> bool:
        """Whether inputs of any size are fine: the one question the job's preflight and its
        workers ask, so that the rule (RandomResizedCrop takes any size; 'cifar' and 'none' do
        with the 'center' resize) is written only here."""
        return self.pre == "imagenet" or self.resize == "center"

    @property
    def n_views(self) -> int:
        """Images per sample in the output: 3 (clean, view1, view2) in JSD mode, else 1."""
        return 3 if self.jsd else 1

    @property
    def preset_name(self) -> str | None:
        """The preset this config is (JSD mode aside), or None for a customised recipe."""
        for name in PRESETS:
            if IPMixConfig.preset(name, jsd=self.jsd) == self:
                return name
        return None

    def replace(self, **changes: Any) -> IPMixConfig:
        """A copy with some fields changed (validated like a new config)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (lists for tuples) that :meth:`from_dict` turns back into an equal
        config; stored with every shard so its images can be traced to their recipe."""
        return {
            "k": self.k,
            "t": self.t,
            "beta": self.beta,
            "severity": self.severity,
            "all_ops": self.all_ops,
            "patch_sizes": list(self.patch_sizes),
            "patch_source": self.patch_source,
            "patch_overflow": self.patch_overflow,
            "pre": self.pre,
            "size": list(self.size),
            "jsd": self.jsd,
            "crop_padding": self.crop_padding,
            "mixing_short_side": self.mixing_short_side,
            "resize": self.resize,
            "resize_side": self.resize_side,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IPMixConfig:
        """Inverse of :meth:`to_dict`. Unknown keys are an error (a typo must not silently fall
        back to a default); missing keys take the dataclass defaults."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"an IPMix config must be a mapping, got {type(data).__name__}")
        known = _public_fields()
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown IPMix option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**dict(data))

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> IPMixConfig:
        """The reference defaults for ``name`` ('cifar' or 'imagenet'), with ``overrides``."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        known = _public_fields()
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(
                f"unknown IPMix option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        values = dict(PRESETS[name])
        values.update(overrides)
        return cls(**values)


PRESETS: dict[str, dict[str, Any]] = {
    "cifar": {
        "k": 3,
        "t": 3,
        "beta": 3.0,
        "severity": 3.0,
        "all_ops": False,
        "patch_sizes": (4, 8, 16, 32),
        "patch_source": "mixing",
        "patch_overflow": "wrap",
        "pre": "cifar",
        "size": (32, 32),
        "jsd": False,
        "resize": "center",
    },
    "imagenet": {
        "k": 3,
        "t": 3,
        "beta": 4.0,
        "severity": 1.0,
        "all_ops": False,
        "patch_sizes": (4, 8, 16, 32, 64, 224),
        "patch_source": "mixed",
        "patch_overflow": "wrap",
        "pre": "imagenet",
        "size": (224, 224),
        "jsd": False,
        "resize": "center",
    },
}


def _public_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(IPMixConfig)}


def _as_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if not low <= value <= high:
        raise ConfigError(f"{name} must be in [{low}, {high}], got {value}")
    return value


def _as_float(name: str, value: Any, positive: bool) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(out) or (positive and out <= 0):
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
    return out


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def _as_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return str(value)
