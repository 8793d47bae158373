"""Tasks that run in the job's own process take the prepared mixing set as it is; only worker
processes read it from the job's work file (``augment_tasks.handed_mixing``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ipmix_cli.augment.config import IPMixConfig
from ipmix_cli.augment.mixing_set import MixingSet
from ipmix_cli.jobs.augment_job import MIXING_FILE, SOURCE_FILE, run_augment
from ipmix_cli.jobs.augment_spec import AugmentSpec
from ipmix_cli.jobs.augment_tasks import _task_mixing, handed_mixing

N_IMAGES = 48


def _spec(tmp_path: Path, bank: Path, name: str) -> AugmentSpec:
    data = tmp_path / "data.npz"
    if not data.exists():
        rng = np.random.default_rng(3)
        images = rng.integers(0, 256, (N_IMAGES, 32, 32, 3), dtype=np.uint8)
        np.savez(data, images=images, labels=np.arange(N_IMAGES) % 4)
    return AugmentSpec(
        input=data,
        mixing_set=bank,
        out=tmp_path / name / "out.h5",
        config=IPMixConfig.preset("cifar"),
        copies=2,
        seed=5,
        shard_size=16,
    )


def _work_files_seen(spec: AugmentSpec, jobs: int, backend: str) -> set[str]:
    """The job's work files, looked at from the progress callback: mid-run, for real."""
    work = spec.out.with_suffix(".shards") / ".work"
    seen: set[str] = set()

    def look(_: int) -> None:
        seen.update(p.name for p in work.iterdir())

    run_augment(spec, jobs=jobs, backend=backend, on_progress=look)
    return seen


@pytest.mark.parametrize(("jobs", "backend"), [(1, "loky"), (2, "threads")])
def test_tasks_in_this_process_need_no_mixing_file(
    tmp_path: Path, bank: Path, jobs: int, backend: str
) -> None:
    seen = _work_files_seen(_spec(tmp_path, bank, backend), jobs, backend)
    assert SOURCE_FILE in seen  # the look did see the work folder mid-run
    assert MIXING_FILE not in seen


def test_worker_processes_read_the_file_and_write_the_same_bytes(
    tmp_path: Path, bank: Path
) -> None:
    here = _spec(tmp_path, bank, "here")
    there = _spec(tmp_path, bank, "there")
    assert MIXING_FILE not in _work_files_seen(here, 1, "loky")
    assert MIXING_FILE in _work_files_seen(there, 2, "loky")
    for a, b in zip(
        sorted(here.out.with_suffix(".shards").glob("*.h5")),
        sorted(there.out.with_suffix(".shards").glob("*.h5")),
        strict=True,
    ):
        assert a.read_bytes() == b.read_bytes(), a.name


class _Task:
    def __init__(self, mixing_file: Path, job_hash: str) -> None:
        self.mixing_file = mixing_file
        self.job_hash = job_hash


def test_a_handed_set_is_for_its_own_job_and_only_while_handed(tmp_path: Path) -> None:
    config = IPMixConfig.preset("cifar")
    pictures = [np.full((40, 40, 3), v, np.uint8) for v in (10, 200)]
    handed = MixingSet.from_pictures(pictures, config)
    path = tmp_path / MIXING_FILE  # never written
    config_json = json.dumps(config.to_dict(), sort_keys=True)
    with handed_mixing(path, "job-a", handed):
        assert _task_mixing(_Task(path, "job-a"), config_json) is handed
        with pytest.raises(FileNotFoundError):  # another job's task reads its own file
            _task_mixing(_Task(path, "job-b"), config_json)
    with pytest.raises(FileNotFoundError):  # handed no longer
        _task_mixing(_Task(path, "job-a"), config_json)
