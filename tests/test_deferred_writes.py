"""Deferred writes: in a run whose tasks execute in its own process, a staged shard is written by
the commit thread while the next task computes. Nothing may change but when the bytes reach the
disk: the same files, nothing under a final name before its commit, nothing left on a discard,
a pickled one complete, and a bounded amount waiting in memory."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from ipmix_cli.fs.atomic import deferred_writes, stage_bytes
from ipmix_cli.jobs import augment_tasks
from ipmix_cli.shards.write import write_shard_pending

DATA = [b"head-", memoryview(np.arange(5000, dtype=np.uint8)), bytearray(b"-tail")]
WHOLE = b"".join(bytes(p) for p in DATA)


def test_a_deferred_file_is_written_by_its_commit(tmp_path: Path) -> None:
    final = tmp_path / "f.bin"
    with deferred_writes():
        staged = stage_bytes(final, DATA)
    assert not staged.tmp.exists() and not final.exists()
    assert staged.waiting_bytes == len(WHOLE)
    staged.commit()
    assert final.read_bytes() == WHOLE and not staged.tmp.exists()
    assert staged.waiting_bytes == 0


def test_outside_the_block_a_file_is_written_at_once(tmp_path: Path) -> None:
    staged = stage_bytes(tmp_path / "f.bin", DATA)
    assert staged.tmp.read_bytes() == WHOLE and staged.waiting_bytes == 0
    staged.commit()
    assert (tmp_path / "f.bin").read_bytes() == WHOLE


def test_a_discarded_deferred_file_leaves_nothing(tmp_path: Path) -> None:
    with deferred_writes():
        staged = stage_bytes(tmp_path / "f.bin", DATA)
    staged.discard()
    assert list(tmp_path.iterdir()) == [] and staged.waiting_bytes == 0


def test_pickling_a_deferred_file_writes_it_first(tmp_path: Path) -> None:
    with deferred_writes():
        staged = stage_bytes(tmp_path / "f.bin", DATA)
    copy = pickle.loads(pickle.dumps(staged))
    assert staged.tmp.read_bytes() == WHOLE  # what another process would receive is complete
    copy.commit()
    assert (tmp_path / "f.bin").read_bytes() == WHOLE


def shard_arrays(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "images": rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8),
        "labels": rng.integers(0, 10, n),
        "source_index": np.arange(n),
        "copy_index": np.zeros(n, np.int64),
    }


def test_deferred_shards_are_the_same_bytes(tmp_path: Path) -> None:
    arrays = shard_arrays(40, 1)
    now = write_shard_pending(tmp_path / "a" / "shard-00000.h5", arrays)
    with deferred_writes():
        later = write_shard_pending(tmp_path / "b" / "shard-00000.h5", arrays)
    assert not later.tmp.exists()
    now.commit()
    later.commit()
    assert (tmp_path / "a" / "shard-00000.h5").read_bytes() == later.path.read_bytes()


def test_commit_all_bounds_what_waits_to_be_written(tmp_path: Path, monkeypatch) -> None:
    """Over the bound, the next task computes only once the earlier shards are on disk."""
    monkeypatch.setattr(augment_tasks, "DEFERRED_BYTES", 1)
    seen: list[list[bool]] = []

    def tasks():
        written = []
        for k in range(4):
            seen.append([p.exists() for p in written])  # resumed: the earlier ones are done
            with deferred_writes():
                shard = write_shard_pending(tmp_path / f"shard-0000{k}.h5", shard_arrays(8, k))
            assert shard.staged.waiting_bytes > 1
            written.append(shard.path)
            yield [shard]

    infos = augment_tasks.commit_all(tasks(), None)
    assert [i.index for i in infos] == [0, 1, 2, 3]
    assert seen == [[], [True], [True, True], [True, True, True]]


@pytest.mark.parametrize("bound", [1, 1 << 40])
def test_commit_all_commits_every_deferred_shard(tmp_path: Path, monkeypatch, bound: int) -> None:
    monkeypatch.setattr(augment_tasks, "DEFERRED_BYTES", bound)

    def tasks():
        for k in range(3):
            with deferred_writes():
                yield [write_shard_pending(tmp_path / f"shard-0000{k}.h5", shard_arrays(5, k))]

    augment_tasks.commit_all(tasks(), None)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"shard-0000{k}.h5" for k in range(3)]
