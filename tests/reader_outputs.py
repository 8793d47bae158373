"""Real augment outputs for the reader tests (numpy, PyTorch, TensorFlow, JAX): one builder so
every framework is tested against the same kind of file the CLI writes."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from fractals import FractalOptions
from ipmix_cli.augment.config import IPMixConfig
from ipmix_cli.jobs.augment_job import run_augment
from ipmix_cli.jobs.augment_spec import AugmentSpec
from ipmix_cli.jobs.bank_job import BankSpec, generate_bank

N_SOURCES = 20
COPIES = 3
SHARD_SIZE = 7  # 60 rows -> 9 shards, the last one short: batches cross shard boundaries
DOCS = Path(__file__).resolve().parent.parent / "docs" / "loading.md"


def build_output(
    root: Path,
    name: str,
    *,
    jsd: bool = False,
    compression: str = "none",
    copies: int = COPIES,
    seed: int = 11,
) -> Path:
    """A real output made by the augment job (copy-major rows, manifest copies/num_sources)."""
    bank = root / "bank"
    if not bank.exists():
        generate_bank(
            BankSpec(out=bank, count=4, seed=5, options=FractalOptions(size=48, points=2000)),
            jobs=1,
        )
    data = root / "data.npz"
    if not data.exists():
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (N_SOURCES, 32, 32, 3), dtype=np.uint8)
        np.savez(data, images=images, labels=np.arange(N_SOURCES) % 3)
    out = root / f"{name}.h5"
    spec = AugmentSpec(
        input=data,
        mixing_set=bank,
        out=out,
        config=IPMixConfig.preset("cifar", jsd=jsd),
        copies=copies,
        seed=seed,
        shard_size=SHARD_SIZE,
        compression=compression,
    )
    run_augment(spec, jobs=1)
    return out


def plain_arrays(entry: Path) -> dict[str, np.ndarray]:
    """Every dataset of an output read with plain h5py through the entry file."""
    with h5py.File(entry, "r") as f:
        return {name: f[name][()] for name in f if isinstance(f[name], h5py.Dataset)}
