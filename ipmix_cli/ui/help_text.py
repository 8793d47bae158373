"""Texts of ``--help`` that are more than a phrase: examples and preset-dependent defaults.

Kept out of ``cli.py`` so the option table there stays readable, and kept as plain strings
(not computed from :data:`ipmix_cli.augment.config.PRESETS`) so ``--help`` loads no numpy; a
test checks :data:`PRESET_DEFAULTS` against the presets, so the two cannot drift apart.
"""

from __future__ import annotations

PRESETS = ("cifar", "imagenet")

PRESET_DEFAULTS: dict[str, dict[str, str]] = {
    "size": {"cifar": "32", "imagenet": "224"},
    "k": {"cifar": "3", "imagenet": "3"},
    "t": {"cifar": "3", "imagenet": "3"},
    "beta": {"cifar": "3", "imagenet": "4"},
    "severity": {"cifar": "3", "imagenet": "1"},
    "all_ops": {"cifar": "--default-ops", "imagenet": "--default-ops"},
    "patch_overflow": {"cifar": "wrap", "imagenet": "wrap"},
    "pre": {"cifar": "cifar", "imagenet": "imagenet"},
    "resize": {"cifar": "center", "imagenet": "center"},
}
"""Each preset-dependent option's default under each preset, as ``--help`` shows it."""


def preset_default(name: str) -> str:
    """``[default: 3 (cifar), 4 (imagenet)]``, or ``[default: 3 (both presets)]`` where the
    presets agree: the default a user gets depends on ``--preset``, so help must show both."""
    values = PRESET_DEFAULTS[name]
    if len(set(values.values())) == 1:
        return f"[default: {values['cifar']} (both presets)]"
    return "[default: " + ", ".join(f"{values[p]} ({p})" for p in PRESETS) + "]"


SHARD_SIZE = (
    "Per shard: a plain number is rows (4096); a number with a unit is bytes of raw "
    "(uncompressed) images, whatever --codec (256MiB, 1GB; KB/MB/GB/TB are powers of 1000, "
    "KiB/MiB/GiB/TiB of 1024). [default: 16-256 MiB of raw images per shard, about 64 shards "
    "per job]"
)

QUIET = "No progress bars or summary lines; errors still print one line and exit non-zero."


def examples(*lines: str) -> str:
    """A click epilog of example command lines, in a ``\\b`` paragraph so click prints them
    as written instead of rewrapping them into one paragraph."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


EPILOGS: dict[str, str] = {
    "main": examples(
        "ipmix demo --out ipmix-demo",
        "ipmix fractals generate --out bank --count 1000",
        "ipmix augment --input cifar10/ --mixing-set bank --out train.h5 --copies 4",
    ),
    "fractals": examples(
        "ipmix fractals generate --out bank --count 1000 --preview bank.png",
        "ipmix fractals render bank --index 17 --size 1024 --out big",
    ),
    "generate": examples(
        "ipmix fractals generate --out bank --count 1000 --size 256 --preview bank.jpg",
        "ipmix fractals generate --out bank-h5 --format h5 --count 20000 --jobs 8",
        "ipmix fractals generate --out bank --count 1000 --resume   # after a Ctrl-C",
        "ipmix fractals generate --out s3://bucket/ipmix/bank --format h5 --count 20000",
    ),
    "render": examples(
        "ipmix fractals render bank --index 17 --index 42 --size 1024 --out big",
    ),
    "demo": examples("ipmix demo", "ipmix demo --out /tmp/demo --jobs 2 --overwrite"),
    "augment": examples(
        "ipmix augment --input cifar10/ --mixing-set bank --out train.h5 --copies 4",
        "ipmix augment --input imagenet/train --mixing-set bank --out train.h5 \\",
        "    --preset imagenet --codec jpeg --shard-size 256MiB --jsd",
        "ipmix augment ... --dry-run        # check, estimate bytes and time, write nothing",
        "ipmix augment ... --resume         # finish an interrupted run",
        "ipmix augment ... --out s3://bucket/ipmix/train.h5   # pip install 'ipmix[s3]'",
    ),
    "export": examples(
        "ipmix export --input imagenet/val --out val.h5 --codec jpeg",
        "ipmix export --input cifar10/ --split test --preset cifar --out test.h5",
    ),
    "inspect": examples(
        "ipmix inspect train.h5", "ipmix inspect s3://bucket/ipmix/train.h5 --json"
    ),
    "verify": examples(
        "ipmix verify train.h5",
        "ipmix verify train.h5 --quick --jobs 8",
        "ipmix verify s3://bucket/ipmix/train.h5 --quick   # no shard downloaded",
    ),
    "preview": examples(
        "ipmix preview train.h5 --out train.png",
        "ipmix preview bank --out bank.jpg --count 64",
    ),
}
"""The epilog of each command, by command name."""
