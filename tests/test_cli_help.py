"""``--help`` of every command, ``--quiet`` everywhere it means something, summary wording."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from ipmix_cli.augment.config import PRESETS
from ipmix_cli.cli import main
from ipmix_cli.jobs.augment_spec import AugmentSummary
from ipmix_cli.jobs.bank_job import BankSummary
from ipmix_cli.ui.help_text import EPILOGS, PRESET_DEFAULTS
from ipmix_cli.ui.summaries import augment_line, bank_line
from ipmix_cli.ui.words import count, plural, rate

QUIET_COMMANDS = [
    ("fractals", "generate"),
    ("fractals", "render"),
    ("augment",),
    ("export",),
    ("demo",),
    ("verify",),
    ("preview",),
]
"""Every command that prints progress or summaries (inspect prints only what is asked for)."""


def commands(
    group: click.Command = main, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], click.Command]]:
    """Every command and group under ``main``, with the words that call it."""
    found = [(path, group)]
    if isinstance(group, click.Group):
        for name, command in sorted(group.commands.items()):
            found += commands(command, (*path, name))
    return found


def run_cli(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("path", "command"), commands(), ids=[" ".join(p) or "ipmix" for p, _ in commands()]
)
def test_every_option_has_help_and_every_command_an_example(
    path: tuple[str, ...], command: click.Command
) -> None:
    undocumented = [
        param.name
        for param in command.params
        if isinstance(param, click.Option) and not (param.help or "").strip()
    ]
    assert undocumented == [], f"ipmix {' '.join(path)}: options without help: {undocumented}"
    code, output = run_cli(*path, "--help")
    assert code == 0, output
    assert "Examples:" in output, f"ipmix {' '.join(path)} --help has no example"
    # the \b paragraph keeps each example on its own line, as written
    printed = [line.strip() for line in output.splitlines()]
    for line in (command.epilog or "").splitlines()[2:]:
        assert line.strip() in printed, (line, output)


def test_epilogs_cover_every_command() -> None:
    names = {path[-1] if path else "main" for path, _ in commands()}
    assert names <= set(EPILOGS), names - set(EPILOGS)


def shown(name: str, preset: str) -> str:
    """A preset's value as ``--help`` writes it."""
    value = PRESETS[preset][name]
    if name == "size":
        return str(value[0])
    if name == "all_ops":
        return "--all-ops" if value else "--default-ops"
    return f"{value:g}" if isinstance(value, float) else str(value)


@pytest.mark.parametrize("name", sorted(PRESET_DEFAULTS))
def test_preset_defaults_in_help_match_the_presets(name: str) -> None:
    for preset in ("cifar", "imagenet"):
        assert PRESET_DEFAULTS[name][preset] == shown(name, preset), (name, preset)


def test_augment_help_shows_both_presets_where_they_differ() -> None:
    code, output = run_cli("augment", "--help")
    text = " ".join(output.split())  # undo click's wrapping
    assert code == 0
    assert "[default: 32 (cifar), 224 (imagenet)]" in text
    assert "[default: 3 (cifar), 4 (imagenet)]" in text  # beta
    assert "[default: 3 (cifar), 1 (imagenet)]" in text  # severity
    assert "[default: 3 (both presets)]" in text  # k and t
    assert "plain number is rows" in text and "bytes of raw" in text  # --shard-size


@pytest.mark.parametrize("path", QUIET_COMMANDS, ids=" ".join)
def test_quiet_exists_on_every_command_that_reports(path: tuple[str, ...]) -> None:
    code, output = run_cli(*path, "--help")
    assert code == 0 and "--quiet" in output, output


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 4-image bank and a 12-image .npz data set, made through the CLI with --quiet."""
    root = tmp_path_factory.mktemp("tiny")
    bank = root / "bank"
    code, output = run_cli(
        "fractals", "generate", "--out", bank, "--count", "4", "--size", "32", "--points",
        "2000", "--jobs", "1", "--quiet", "--preview", root / "bank.png",
    )  # fmt: skip
    assert code == 0 and output == "", output
    rng = np.random.default_rng(1)
    data = root / "d.npz"
    images = rng.integers(0, 256, size=(12, 32, 32, 3), dtype=np.uint8)
    np.savez(data, images=images, labels=np.arange(12) % 3)
    return {"root": root, "bank": bank, "data": data}


def test_quiet_silences_every_command(tiny: dict[str, Path]) -> None:
    root, bank, data = tiny["root"], tiny["bank"], tiny["data"]
    out = root / "q.h5"
    runs = [
        ("fractals", "render", bank, "--index", "1", "--out", root / "again"),
        ("augment", "--input", data, "--mixing-set", bank, "--out", out, "--copies", "2",
         "--shard-size", "6", "--jobs", "1"),
        ("augment", "--input", data, "--mixing-set", bank, "--out", out, "--copies", "2",
         "--shard-size", "6", "--jobs", "1", "--resume"),
        ("export", "--input", data, "--out", root / "e.h5", "--preset", "cifar", "--jobs", "1"),
        ("verify", out),
        ("preview", out, "--out", root / "sheet.png"),
        ("preview", bank, "--out", root / "bank-again.jpg"),
    ]  # fmt: skip
    for args in runs:
        code, output = run_cli(*args, "--quiet")  # stdout and stderr together
        assert code == 0 and output == "", (args, output)
    assert (root / "again" / "00001.png").is_file() and (root / "sheet.png").is_file()
    # errors still print one line and exit non-zero
    (out.with_suffix(".shards") / "shard-00001.h5").unlink()
    code, output = run_cli("verify", out, "--quiet")
    lines = output.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "shard-00001.h5" in lines[0], output


def test_summaries_of_one_shard_one_copy_and_a_resume(tiny: dict[str, Path]) -> None:
    root, bank, data = tiny["root"], tiny["bank"], tiny["data"]
    out = root / "one.h5"
    args = ["augment", "--input", data, "--mixing-set", bank, "--out", out, "--jobs", "1"]
    code, output = run_cli(*args, "--dry-run")
    assert code == 0 and "x 1 copy =" in output and "in 1 shard," in output, output
    code, output = run_cli(*args)
    assert code == 0 and "12 images in 1 shard (" in output, output
    result = CliRunner().invoke(main, [str(a) for a in (*args, "--resume")])
    assert result.exit_code == 0, result.output
    assert "nothing to do: the 1 shard was already complete" in result.stdout, result.stdout
    assert "/s" not in result.stdout, result.stdout  # no rate for a run that made nothing
    code, output = run_cli("verify", out)
    assert code == 0 and output.startswith("ok: 12 images in 1 shard,"), output
    code, output = run_cli("preview", out, "--out", root / "one.png")
    assert code == 0 and output.startswith("12 images ->"), output


def test_summary_lines_say_singular_and_no_rate_without_work(tmp_path: Path) -> None:
    one = AugmentSummary(tmp_path, images=1, shards=1, computed_shards=1, reused_shards=0,
                         bytes=3072, seconds=2.0, skipped=[("a.png", "broken")])  # fmt: skip
    line = augment_line(one)
    assert "1 image in 1 shard (" in line and "1 unreadable file skipped" in line, line
    assert "0.5 images/s" in line, line
    done = AugmentSummary(tmp_path, images=96, shards=12, computed_shards=0, reused_shards=12,
                          bytes=10**6, seconds=0.4)  # fmt: skip
    line = augment_line(done)
    assert line.startswith("nothing to do: all 12 shards were already complete"), line
    assert "12 reused" in line and "/s" not in line, line
    bank = BankSummary(tmp_path, images=1, rendered=1, reused=0, seconds=4.0)
    assert bank_line(bank, 32, "png").startswith("1 fractal (32x32 px, png)")
    assert "0.2 images/s" in bank_line(bank, 32, "png")
    resumed = BankSummary(tmp_path, images=5, rendered=0, reused=5, seconds=0.1)
    line = bank_line(resumed, 32, "png")
    assert "nothing to do: all 5 images were already rendered" in line and "/s" not in line


def test_words() -> None:
    assert [count(1, "copy"), count(2, "copy"), count(0, "shard")] == [
        "1 copy",
        "2 copies",
        "0 shards",
    ]
    assert plural(3, "class") == "classes" and plural(1, "class") == "class"
    assert rate(0, 5.0) is None and rate(5, 0.0) is None
    assert rate(1234, 1.0) == "1234 images/s" and rate(1, 3.0) == "0.3 images/s"
