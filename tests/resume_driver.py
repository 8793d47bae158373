"""A training loop that is preempted and resumed, run as its own process by the resume tests.

    python resume_driver.py FRAMEWORK ENTRY WORKDIR first K0[,K1]
    python resume_driver.py FRAMEWORK ENTRY WORKDIR rest

``first`` reads epoch ``EPOCH`` and, after rank r's ``K_r``-th batch, saves the loader state as
the training loop would (rank by rank, JSON), then kills itself with SIGKILL: no clean-up runs,
DataLoader workers are orphaned mid-prefetch. ``rest`` starts a fresh process, restores each
rank's state and reads to the end of the epoch. Every batch received is saved as
``WORKDIR/<role>-r<rank>-<i>.npz`` for the test to join and compare.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np

EPOCH = 1
BATCH = 6
SEED = 7
WORLD = 2


def _save(workdir: Path, role: str, rank: int, i: int, batch: Any) -> None:
    images, labels, rows = (np.asarray(x) for x in batch)
    np.savez(workdir / f"{role}-r{rank}-{i:03d}.npz", images=images, labels=labels, rows=rows)


def _torch_loader(entry: str, rank: int) -> Any:
    from ipmix_cli.readers.torch import ShardDataset

    ds = ShardDataset(entry, extras=("row",))
    return ds.loader(
        BATCH, epoch=EPOCH, seed=SEED, rank=rank, world_size=WORLD, num_workers=2, prefetch_factor=4
    )


def _batches(framework: str, entry: str, rank: int, start: int) -> Any:
    """The epoch's batches for ``rank`` from batch ``start`` (tf.data and JAX take it as
    ``start_batch``; the torch loader has been restored from its state instead)."""
    if framework == "tf":
        from ipmix_cli.readers.tf import dataset

        ds = dataset(
            entry,
            BATCH,
            epoch=EPOCH,
            start_batch=start,
            seed=SEED,
            rank=rank,
            world_size=WORLD,
            extras=("row",),
            even="pad",
        )
        return (tuple(t.numpy() for t in b) for b in ds)
    if framework == "jax":
        from ipmix_cli.readers.jax import batches

        return batches(
            entry,
            BATCH,
            EPOCH,
            start_batch=start,
            seed=SEED,
            rank=rank,
            world_size=WORLD,
            drop_last=False,
            extras=("row",),
        )
    raise ValueError(framework)


def first(framework: str, entry: str, workdir: Path, stops: list[int]) -> None:
    states: dict[str, Any] = {}
    for rank, stop in enumerate(stops):
        if framework == "torch":
            loader = _torch_loader(entry, rank)
            source = iter(loader)
        else:
            source = _batches(framework, entry, rank, 0)
        for i, batch in enumerate(source):
            _save(workdir, "first", rank, i, batch)
            if i + 1 == stop:
                break
        # what a training loop checkpoints after its k-th step
        states[str(rank)] = loader.state_dict() if framework == "torch" else {"batches": stop}
    tmp = workdir / "state.json.tmp"
    tmp.write_text(json.dumps(states))
    tmp.replace(workdir / "state.json")
    os.kill(os.getpid(), signal.SIGKILL)  # preempted: nothing after this runs


def rest(framework: str, entry: str, workdir: Path) -> None:
    states = json.loads((workdir / "state.json").read_text())
    for rank in range(WORLD):
        if framework == "torch":
            loader = _torch_loader(entry, rank)
            loader.load_state_dict(states[str(rank)])
            source = iter(loader)
        else:
            source = _batches(framework, entry, rank, states[str(rank)]["batches"])
        for i, batch in enumerate(source):
            _save(workdir, "rest", rank, i, batch)


if __name__ == "__main__":
    framework, entry, workdir, role = sys.argv[1:5]
    if role == "first":
        first(framework, entry, Path(workdir), [int(k) for k in sys.argv[5].split(",")])
    else:
        rest(framework, entry, Path(workdir))
