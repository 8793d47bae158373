"""What an existing training script expects: a torchvision-like dataset whose plain
``DataLoader(ds, shuffle=True, num_workers=2)`` reads one copy per epoch, and mid-epoch resume
for torch, tf.data and JAX, preempted by a real SIGKILL and resumed in a new process."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from reader_outputs import N_SOURCES, build_output, plain_arrays

HERE = Path(__file__).resolve().parent
COPIES4 = 4


@pytest.fixture(scope="module")
def four_copies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_output(tmp_path_factory.mktemp("dropin"), "four", copies=COPIES4, seed=4)


def _torch():
    return pytest.importorskip("torch", reason="torch is not installed")


def _fork_safe_context():
    """Fork unless TensorFlow or JAX threads are loaded in this session (see
    test_readers_torch); then a fork server."""
    import multiprocessing

    if not any(m in sys.modules for m in ("tensorflow", "jax")):
        return None
    return multiprocessing.get_context("forkserver")


@pytest.mark.parametrize(
    ("persistent", "start"), [(False, None), (True, None), (True, "forkserver")]
)
def test_plain_dataloader_reads_one_copy_per_epoch(
    four_copies: Path, persistent: bool, start: str | None
) -> None:
    """``start``: how workers start; ``None`` is fork (unless TF/JAX threads forbid it); a
    fork server pickles the dataset to them, as spawn does."""
    torch = _torch()
    from torch.utils.data import DataLoader

    from ipmix_cli.readers.torch import ShardDataset

    ds = ShardDataset(four_copies, extras=("source_index", "copy_index"))
    assert len(ds) == N_SOURCES
    loader = DataLoader(
        ds,
        batch_size=6,
        shuffle=True,
        num_workers=2,
        persistent_workers=persistent,
        multiprocessing_context=_fork_safe_context() if start is None else start,
    )
    assert len(loader) == 4  # ceil(20 / 6), not ceil(80 / 6)
    ref = plain_arrays(four_copies)
    torch.manual_seed(0)
    for epoch in range(2):
        ds.set_epoch(epoch)
        sources, copies = [], []
        for images, labels, source, copy in loader:
            rows = copy.numpy() * N_SOURCES + source.numpy()
            np.testing.assert_array_equal(images.numpy(), ref["images"][rows])
            np.testing.assert_array_equal(labels.numpy(), ref["labels"][rows])
            sources += source.tolist()
            copies += copy.tolist()
        assert Counter(sources) == Counter(range(N_SOURCES)), f"epoch {epoch}: each once"
        assert set(copies) == {epoch}, f"epoch {epoch} must read copy {epoch}"


def test_torchvision_attributes_and_transforms(four_copies: Path) -> None:
    torch = _torch()
    from ipmix_cli.readers.torch import ShardDataset

    ref = plain_arrays(four_copies)
    plain = ShardDataset(four_copies)
    names = plain.reader.class_names
    assert plain.classes == names and plain.class_to_idx == {n: i for i, n in enumerate(names)}
    assert plain.targets == ref["labels"][:N_SOURCES].tolist()
    every = ShardDataset(four_copies, epoch_mode="all")
    assert len(every) == COPIES4 * N_SOURCES and every.targets == ref["labels"].tolist()

    ds = ShardDataset(
        four_copies,
        epoch=6,  # copy 2
        channels_first=True,
        transform=lambda image: image.flip(-1),
        target_transform=lambda label: f"class {label}",
    )
    image, label = ds[3]
    row = 2 * N_SOURCES + 3
    expected = ref["images"][row].transpose(2, 0, 1)[:, :, ::-1]
    np.testing.assert_array_equal(image.numpy(), expected)
    assert label == f"class {ref['labels'][row]}"
    images, labels = ds[[3, 5]]  # a batch: transformed per sample, then stacked
    assert isinstance(images, torch.Tensor) and images.shape == (2, 3, 32, 32)
    np.testing.assert_array_equal(images[0].numpy(), expected)
    assert labels == [f"class {ref['labels'][row]}", f"class {ref['labels'][row + 2]}"]
    with pytest.raises(IndexError):
        ds[N_SOURCES]


def test_loader_state_round_trip_in_process(four_copies: Path) -> None:
    """The state counts what the loop received, not what the workers prefetched; an epoch's
    end moves the state to the next epoch; a state from another plan is refused."""
    _torch()
    from ipmix_cli.readers.torch import ShardDataset

    ds = ShardDataset(four_copies, extras=("row",))
    loader = ds.loader(4, seed=1, num_workers=2, multiprocessing_context=_fork_safe_context())
    full = [b[2].numpy() for b in loader]  # epoch 0
    it = iter(loader)  # epoch 1
    got = [next(it)[2].numpy() for _ in range(2)]
    state = loader.state_dict()
    assert (state["epoch"], state["samples"]) == (1, 8)
    again = ds.loader(4, seed=1, num_workers=0)
    again.load_state_dict(state)
    rest = [b[2].numpy() for b in again]
    epoch1 = again.sampler.sampler.rows(1)
    np.testing.assert_array_equal(np.concatenate(got + rest), epoch1)
    assert again.state_dict() == {**state, "epoch": 2, "samples": 0}
    assert not np.array_equal(np.concatenate(full), epoch1)
    with pytest.raises(ValueError, match="batch_size"):
        ds.loader(5, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="seed"):
        ds.loader(4, seed=2).load_state_dict(state)


def test_loader_state_of_another_output_is_refused(four_copies: Path, tmp_path: Path) -> None:
    """Another run of the same input and shape (another seed): a state saved on one would
    replay other rows on the other, so it is refused; the same output made again (same seed)
    holds the same rows and takes it."""
    _torch()
    from ipmix_cli.readers.torch import ShardDataset

    loader = ShardDataset(four_copies).loader(4, seed=1)
    next(iter(loader))
    state = loader.state_dict()
    other = build_output(tmp_path, "other", copies=COPIES4, seed=5)
    with pytest.raises(ValueError, match="output"):
        ShardDataset(other).loader(4, seed=1).load_state_dict(state)
    again = build_output(tmp_path, "again", copies=COPIES4, seed=4)
    resumed = ShardDataset(again).loader(4, seed=1)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state


def _reference(entry: Path, framework: str, rank: int) -> np.ndarray:
    """Rows of rank ``rank``'s uninterrupted epoch, from the plan written out independently:
    permutation seeded (seed, epoch) of copy ``epoch % copies``, padded, then rank blocks."""
    import resume_driver as d

    perm = np.random.default_rng([d.SEED, d.EPOCH]).permutation(N_SOURCES)
    rows = perm + (d.EPOCH % COPIES4) * N_SOURCES
    per_rank = -(-N_SOURCES // d.WORLD)
    rows = np.resize(rows, per_rank * d.WORLD)
    return rows[rank * per_rank : (rank + 1) * per_rank]


def _joined(workdir: Path, rank: int) -> dict[str, np.ndarray]:
    parts = [np.load(p) for p in sorted(workdir.glob(f"first-r{rank}-*.npz"))]
    parts += [np.load(p) for p in sorted(workdir.glob(f"rest-r{rank}-*.npz"))]
    return {k: np.concatenate([p[k] for p in parts]) for k in ("images", "labels", "rows")}


@pytest.mark.parametrize("framework", ["torch", "tf", "jax"])
def test_resume_after_sigkill_in_a_new_process(
    four_copies: Path, tmp_path: Path, framework: str
) -> None:
    module = {"torch": "torch", "tf": "tensorflow", "jax": "jax"}[framework]
    pytest.importorskip(module, reason=f"{module} is not installed")
    stops = "2,1"  # rank 0 preempted after 2 batches, rank 1 after 1
    driver = [sys.executable, str(HERE / "resume_driver.py"), framework, str(four_copies)]
    first = subprocess.run(
        [*driver, str(tmp_path), "first", stops], capture_output=True, text=True, timeout=300
    )
    assert first.returncode == -9, first.stderr  # killed, not finished
    assert (tmp_path / "state.json").exists()
    rest = subprocess.run(
        [*driver, str(tmp_path), "rest"], capture_output=True, text=True, timeout=300
    )
    assert rest.returncode == 0, rest.stderr
    ref = plain_arrays(four_copies)
    for rank, stop in enumerate(int(k) for k in stops.split(",")):
        assert len(list(tmp_path.glob(f"first-r{rank}-*.npz"))) == stop
        joined = _joined(tmp_path, rank)
        rows = _reference(four_copies, framework, rank)
        np.testing.assert_array_equal(joined["rows"], rows)
        np.testing.assert_array_equal(joined["images"], ref["images"][rows])
        np.testing.assert_array_equal(joined["labels"], ref["labels"][rows])
