"""The prepared mixing set remembered across runs (``jobs/mixing_prep.py``), against a fresh
decode and ``MixingSet.from_pictures`` every time."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ipmix_cli.augment.config import IPMixConfig
from ipmix_cli.augment.mixing_set import MixingSet
from ipmix_cli.jobs import mixing_prep
from ipmix_cli.jobs.mixing_prep import pixels_digest, prepare_mixing
from ipmix_cli.sources import open_mixing_set

CIFAR = IPMixConfig.preset("cifar")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("IPMIX_MIXING_CACHE", raising=False)
    return tmp_path / "cache" / "ipmix" / "mixing"


def _bank(folder, seed: int = 0, n: int = 6):
    rng = np.random.default_rng(seed)
    folder.mkdir(exist_ok=True)
    for i in range(n):
        pixels = rng.integers(0, 256, (40 + 3 * i, 50, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return folder


def _fresh(bank, config):
    pictures = open_mixing_set(bank)
    return MixingSet.from_pictures(pictures, config), pixels_digest(pictures)


def _same(prepared, bank, config):
    mixing, digest = _fresh(bank, config)
    np.testing.assert_array_equal(prepared.mixing.pictures, mixing.pictures)
    np.testing.assert_array_equal(prepared.mixing.shapes, mixing.shapes)
    assert prepared.mixing.size == mixing.size and prepared.count == len(mixing)
    assert prepared.pixels_sha256 == digest


def _no_decode(*args, **kwargs):
    raise AssertionError("the bank was decoded again")


def test_second_preparation_comes_from_the_cache(tmp_path, cache, monkeypatch):
    bank = _bank(tmp_path / "bank")
    checked = []
    first = prepare_mixing(bank, CIFAR, lambda *a: checked.append(a))
    _same(first, bank, CIFAR)
    assert len(list(cache.glob("*.npz"))) == 1
    monkeypatch.setattr(mixing_prep, "open_mixing_set", _no_decode)
    second = prepare_mixing(bank, CIFAR, lambda *a: checked.append(a))
    _same(second, bank, CIFAR)
    assert checked[0] == checked[1] == (6, first.mixing.pictures.nbytes)


def test_a_changed_bank_or_size_is_prepared_again(tmp_path, cache):
    bank = _bank(tmp_path / "bank")
    prepare_mixing(bank, CIFAR, lambda *a: None)
    # the same names and sizes, other pixels: the content is the key
    other = _bank(tmp_path / "other", seed=1)
    for f in other.iterdir():
        (bank / f.name).write_bytes(f.read_bytes())
    _same(prepare_mixing(bank, CIFAR, lambda *a: None), bank, CIFAR)
    bigger = IPMixConfig.preset("cifar", size=(48, 48))
    _same(prepare_mixing(bank, bigger, lambda *a: None), bank, bigger)
    wider = IPMixConfig.preset("cifar", mixing_short_side=44)  # same output size
    _same(prepare_mixing(bank, wider, lambda *a: None), bank, wider)
    assert len(list(cache.glob("*.npz"))) == 4


def test_the_size_check_runs_before_resizing_on_a_miss(tmp_path, cache):
    bank = _bank(tmp_path / "bank")

    def refuse(count, need):
        raise ValueError(f"{count} {need}")

    with pytest.raises(ValueError, match="^6 "):
        prepare_mixing(bank, CIFAR, refuse)
    assert not cache.exists()


def test_a_broken_entry_is_ignored(tmp_path, cache):
    bank = _bank(tmp_path / "bank")
    prepare_mixing(bank, CIFAR, lambda *a: None)
    (entry,) = cache.glob("*.npz")
    entry.write_bytes(entry.read_bytes()[:100])
    _same(prepare_mixing(bank, CIFAR, lambda *a: None), bank, CIFAR)


def test_off_switch_and_pruning(tmp_path, cache, monkeypatch):
    bank = _bank(tmp_path / "bank")
    monkeypatch.setenv("IPMIX_MIXING_CACHE", "off")
    prepare_mixing(bank, CIFAR, lambda *a: None)
    assert not cache.exists()
    monkeypatch.delenv("IPMIX_MIXING_CACHE")
    monkeypatch.setattr(mixing_prep, "CACHE_ENTRIES", 2)
    for side in (32, 40, 48):
        prepare_mixing(bank, IPMixConfig.preset("cifar", size=(side, side)), lambda *a: None)
    assert len(list(cache.glob("*.npz"))) == 2


def test_a_replaced_shard_of_an_hdf5_bank_is_prepared_again(tmp_path, cache):
    """An ipmix output used as the mixing set keeps its pixels in its shards: one swapped for
    a shard of the same size from another output (the entry file untouched) must not bring
    back the remembered pictures."""
    from click.testing import CliRunner

    from ipmix_cli.cli import main

    entries = []
    for seed in (0, 1):
        rng = np.random.default_rng(seed)
        data = tmp_path / f"m{seed}.npz"
        np.savez(data, images=rng.integers(0, 256, (20, 40, 40, 3), dtype=np.uint8),
                 labels=np.zeros(20, np.int64))  # fmt: skip
        out = tmp_path / f"set{seed}" / "m.h5"
        args = ["export", "--input", str(data), "--out", str(out), "--preset", "cifar",
                "--size", "40", "--shard-size", "10", "--quiet"]  # fmt: skip
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        entries.append(out)
    first = prepare_mixing(entries[0], CIFAR, lambda *a: None)
    _same(first, entries[0], CIFAR)
    shard = sorted(entries[0].with_suffix(".shards").glob("shard-*.h5"))[1]
    other = entries[1].with_suffix(".shards") / shard.name
    assert shard.stat().st_size == other.stat().st_size
    shard.write_bytes(other.read_bytes())
    again = prepare_mixing(entries[0], CIFAR, lambda *a: None)
    _same(again, entries[0], CIFAR)
    assert again.pixels_sha256 != first.pixels_sha256
