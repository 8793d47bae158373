"""``ipmix inspect`` / ``verify`` / ``preview`` of an ``s3://`` output, through the real CLI,
against a real S3-compatible server on loopback (``moto_server``), no mocks.

What each command downloads is read from the server's own request log (one line per request):
``inspect`` and ``verify --quick`` must GET no shard object, ``verify`` each shard once, and
``preview`` only the shards holding the sheet's rows. A shard object replaced by a corrupt copy
of the same size without its record passes ``--quick`` (which only lists and HEADs) and fails
the deep check: a quick check that opened the shards would see it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from s3server import s3  # noqa: F401 - the fixture

from fractals import FractalOptions
from ipmix_cli.commands.augment import augment_spec
from ipmix_cli.jobs.augment_job import run_augment
from ipmix_cli.jobs.bank_job import BankSpec, generate_bank
from ipmix_cli.remote.mirror import mirrored
from ipmix_cli.remote.store import ObjectStore
from ipmix_cli.remote.upload import shard_metadata
from ipmix_cli.remote.url import ObjectURL
from ipmix_cli.shards import read_manifest, read_shard_info
from ipmix_cli.ui.sheets import plan_augment_sheet

BUCKET = "ipmix-tools"
N_IMAGES, COPIES, SHARD = 24, 2, 8  # 48 rows in 6 shards of 8
SHARD_NAMES = [f"out.shards/shard-{i:05d}.h5" for i in range(N_IMAGES * COPIES // SHARD)]
_REQUEST = re.compile(r'"(GET|HEAD) /' + BUCKET + r"/(\S+) HTTP/")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two local outputs of the same data (seeds 3 and 4): same shapes, other bytes."""
    root = tmp_path_factory.mktemp("local")
    bank = root / "bank"
    generate_bank(
        BankSpec(out=bank, count=8, seed=5, options=FractalOptions(size=48, points=4000)), jobs=1
    )
    rng = np.random.default_rng(0)
    data = root / "data.npz"
    images = rng.integers(0, 256, size=(N_IMAGES, 32, 32, 3), dtype=np.uint8)
    np.savez(data, images=images, labels=np.arange(N_IMAGES) % 3)
    made = []
    for seed in (3, 4):
        out = root / f"seed{seed}" / "out.h5"
        spec = augment_spec(data, bank, out, copies=COPIES, shard_size=SHARD, seed=seed)
        run_augment(spec, jobs=1)
        made.append(out)
    return made[0], made[1]


@pytest.fixture(scope="module")
def bucket(s3):  # noqa: F811 - the fixture
    s3.make_bucket(BUCKET)
    return s3


def upload(entry: Path, prefix: str) -> str:
    """The local output ``entry`` as objects under ``prefix``, as ``ipmix augment --out s3://``
    leaves them: shards carrying their own record, the entry beside their folder."""
    store = ObjectStore(BUCKET)
    for record in read_manifest(entry).shards:
        path = entry.parent / record.file
        meta = shard_metadata(read_shard_info(path), path.stat().st_size)
        store.put_file(path, f"{prefix}/{record.file}", meta)
    store.put_file(entry, f"{prefix}/{entry.name}")
    return f"s3://{BUCKET}/{prefix}/{entry.name}"


def put(key: str, data: bytes, meta: dict[str, str] | None = None) -> None:
    ObjectStore(BUCKET).put_bytes(key, data, meta)


class Run:
    """The real CLI in a new process, with its own ``TMPDIR`` (the mirror must leave nothing
    there) and the server's requests made while it ran."""

    def __init__(self, server, tmp: Path) -> None:
        self.server = server
        self.tmp = tmp / "tmpdir"
        self.tmp.mkdir()

    def __call__(
        self, *args: object, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        start = self.server.log.stat().st_size
        base = {**os.environ, "TMPDIR": str(self.tmp)}
        result = subprocess.run(
            [sys.executable, "-m", "ipmix_cli", *map(str, args)],
            capture_output=True,
            text=True,
            timeout=120,
            env=base if env is None else env,
        )
        with open(self.server.log, "rb") as log:
            log.seek(start)
            lines = log.read().decode(errors="replace").splitlines()
        self.requests = [m.groups() for m in map(_REQUEST.search, lines) if m]
        assert list(self.tmp.iterdir()) == [], "the mirror folder was left behind"
        return result

    def got(self, prefix: str) -> list[str]:
        """Objects fetched (GET) under ``prefix``, relative to it, in request order."""
        return [
            k[len(prefix) + 1 :]
            for verb, k in self.requests
            if verb == "GET" and k.startswith(prefix)
        ]

    def headed(self, prefix: str) -> set[str]:
        return {
            k[len(prefix) + 1 :]
            for verb, k in self.requests
            if verb == "HEAD" and k.startswith(prefix)
        }


@pytest.fixture()
def ipmix(bucket, tmp_path: Path) -> Run:
    return Run(bucket, tmp_path)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "ipmix-s3-" not in lines[0], "a message names the temporary mirror"
    return lines[0]


def test_inspect_matches_the_local_output_and_downloads_no_shard(ipmix, outputs):
    local = outputs[0]
    url = upload(local, "inspect")
    mine = ipmix("inspect", url)
    assert mine.returncode == 0, mine.stderr
    assert ipmix.got("inspect") == ["out.h5"]  # the entry, and no shard
    theirs = ipmix("inspect", local)
    remote_lines, local_lines = mine.stdout.splitlines(), theirs.stdout.splitlines()
    assert remote_lines[0] == f"file:      {url}"
    assert remote_lines[1:] == local_lines[1:]
    mine = ipmix("inspect", url, "--json")
    remote, expected = json.loads(mine.stdout), json.loads(ipmix("inspect", local, "--json").stdout)
    assert remote.pop("path") == url and expected.pop("path") == str(local)
    assert remote == expected
    # a missing shard object shows in the one listing
    ObjectStore(BUCKET).delete([f"inspect/{SHARD_NAMES[1]}"])
    gone = json.loads(ipmix("inspect", url, "--json").stdout)
    assert gone["missing_shards"] == 1 and not gone["shards"][1]["exists"]
    size = (local.parent / SHARD_NAMES[1]).stat().st_size
    assert gone["bytes_on_disk"] == expected["bytes_on_disk"] - size
    assert "shards:    6 (1 missing)" in ipmix("inspect", url).stdout


def test_verify_fetches_each_shard_once_and_quick_none(ipmix, outputs):
    url = upload(outputs[0], "ok")
    deep = ipmix("verify", url)
    assert deep.returncode == 0, deep.stdout + deep.stderr
    assert deep.stdout == ipmix("verify", outputs[0]).stdout  # "ok: ... (checksums)"
    assert deep.stdout.startswith("ok: 48 images in 6 shards, 6 checked (checksums)")
    assert ipmix("verify", url).returncode == 0
    assert sorted(ipmix.got("ok")) == sorted(["out.h5", *SHARD_NAMES])  # each shard once
    quick = ipmix("verify", "--quick", url)
    assert quick.returncode == 0, quick.stdout + quick.stderr
    assert quick.stdout.startswith("ok: 48 images in 6 shards, 6 checked (structure only)")
    assert ipmix.got("ok") == ["out.h5"]  # no shard downloaded
    assert ipmix.headed("ok") == set(SHARD_NAMES)  # each shard's record read by a HEAD


def test_quick_verify_finds_missing_short_and_foreign_shard_objects(ipmix, outputs):
    local, other = outputs
    url = upload(local, "faults")
    store = ObjectStore(BUCKET)
    store.delete([f"faults/{SHARD_NAMES[1]}"])
    short = (local.parent / SHARD_NAMES[2]).read_bytes()[:-100]
    put(f"faults/{SHARD_NAMES[2]}", short)  # a wrong size, and no record of its own
    foreign = other.parent / SHARD_NAMES[3]  # another run's shard 3: same size, its own record
    assert foreign.stat().st_size == (local.parent / SHARD_NAMES[3]).stat().st_size
    meta = shard_metadata(read_shard_info(foreign), foreign.stat().st_size)
    put(f"faults/{SHARD_NAMES[3]}", foreign.read_bytes(), meta)
    put("faults/out.shards/notes.txt", b"hello")
    result = ipmix("verify", "--quick", url)
    assert result.returncode == 1, result.stdout
    assert ipmix.got("faults") == ["out.h5"]
    faults = [line for line in result.stdout.splitlines() if line.startswith("FAULT ")]
    where = f"s3://{BUCKET}/faults/"
    assert faults == [
        f"FAULT {where}{SHARD_NAMES[1]}: shard is missing (recorded 8 images; plain HDF5 "
        "readers see zero images and label -1 there)",
        f"FAULT {where}{SHARD_NAMES[2]}: shard was replaced or truncated: {len(short)} bytes, "
        f"the entry records {len(short) + 100}",
        f"FAULT {where}{SHARD_NAMES[3]}: its own record's checksum differs from the entry's "
        "(shard replaced)",
    ], result.stdout
    assert f"warning: {where}out.shards/notes.txt: not part of this output" in result.stderr
    assert f"Error: {url}: 3 faults found" in result.stderr
    quiet = ipmix("verify", "--quick", "--quiet", url)
    assert quiet.returncode == 1 and quiet.stdout == "" and "Traceback" not in quiet.stderr
    warning, line = quiet.stderr.strip().splitlines()
    assert warning.startswith("warning: ") and "first: " in line and SHARD_NAMES[1] in line


def test_deep_verify_catches_a_same_size_corruption_that_quick_cannot_see(ipmix, outputs):
    local = outputs[0]
    url = upload(local, "corrupt")
    zeros = (local.parent / SHARD_NAMES[4]).stat().st_size
    put(f"corrupt/{SHARD_NAMES[4]}", bytes(zeros))  # not even HDF5, but the recorded size
    shard = local.parent / SHARD_NAMES[5]
    with h5py.File(shard, "r") as f:
        images = f["images"]
        offset = (
            images.id.get_offset()
            if images.chunks is None
            else images.id.get_chunk_info(0).byte_offset
        )
    flipped = bytearray(shard.read_bytes())
    flipped[offset + 100] ^= 0x01
    put(f"corrupt/{SHARD_NAMES[5]}", bytes(flipped))
    quick = ipmix("verify", "--quick", url)
    assert quick.returncode == 0, quick.stdout + quick.stderr  # sizes match, no records to compare
    assert ipmix.got("corrupt") == ["out.h5"]
    deep = ipmix("verify", url)
    assert deep.returncode == 1, deep.stdout
    faults = [line for line in deep.stdout.splitlines() if line.startswith("FAULT ")]
    where = f"s3://{BUCKET}/corrupt/"
    assert len(faults) == 2, deep.stdout
    assert faults[0].startswith(f"FAULT {where}{SHARD_NAMES[4]}: unreadable"), faults
    assert faults[1].startswith(f"FAULT {where}{SHARD_NAMES[5]}: checksum mismatch"), faults
    assert "ipmix-s3-" not in deep.stdout + deep.stderr
    assert f"Error: {url}: 2 faults found" in deep.stderr


def test_preview_is_the_local_preview_from_the_shards_it_shows(ipmix, outputs, tmp_path):
    local = outputs[0]
    url = upload(local, "preview")
    mine, theirs = tmp_path / "remote.png", tmp_path / "local.png"
    result = ipmix("preview", url, "--out", mine, "--count", 4)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"4 images -> {mine}"
    rows = plan_augment_sheet(N_IMAGES, COPIES, 4, False).rows(N_IMAGES)
    needed = sorted({SHARD_NAMES[r // SHARD] for r in rows.tolist()})
    assert len(needed) < len(SHARD_NAMES)
    assert sorted(ipmix.got("preview")) == sorted(["out.h5", *needed])
    assert ipmix("preview", local, "--out", theirs, "--count", 4).returncode == 0
    assert np.array_equal(np.asarray(Image.open(mine)), np.asarray(Image.open(theirs)))
    line = one_line_error(ipmix("preview", url, "--out", f"s3://{BUCKET}/sheet.png"))
    assert (
        line
        == f"Error: s3://{BUCKET}/sheet.png: the sheet is written locally; give a local --out path"
    )
    # every shard object is checked before reading, not only the ones shown
    unused = next(n for n in SHARD_NAMES if n not in needed)
    ObjectStore(BUCKET).delete([f"preview/{unused}"])
    line = one_line_error(ipmix("preview", url, "--out", mine, "--overwrite"))
    assert (
        line == f"Error: s3://{BUCKET}/preview/{unused}: shard is missing (it should hold 8 images)"
    )
    line = one_line_error(ipmix("preview", tmp_path / "nothing.h5", "--out", mine))
    assert line.endswith("nothing.h5: does not exist"), line


FAILURES = {
    "bucket": ("s3://no-such-bucket/x/out.h5", "the bucket does not exist"),
    "entry": (f"s3://{BUCKET}/nothing/out.h5", "object is missing"),
    "junk": (f"s3://{BUCKET}/junk/out.h5", "unreadable entry file: "),
    "credentials": (f"s3://{BUCKET}/nothing/out.h5", "no S3 credentials found; "),
}


@pytest.mark.parametrize(
    ("command", "failures"),
    [
        (("inspect",), ("bucket", "entry", "credentials")),
        (("verify",), ("bucket", "junk")),
        (("verify", "--quick"), ("entry", "junk")),
        (("preview", "--out", "sheet.png"), ("bucket", "junk", "credentials")),
    ],
    ids=["inspect", "verify", "quick", "preview"],
)
def test_failures_are_one_line_naming_the_object(ipmix, outputs, tmp_path, command, failures):
    name, *rest = command
    rest = [str(tmp_path / r) if r.endswith(".png") else r for r in rest]
    put("junk/out.h5", b"not an HDF5 file")
    no_credentials = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"}
    anonymous = {k: v for k, v in os.environ.items() if k not in no_credentials}
    anonymous.update(TMPDIR=str(ipmix.tmp), AWS_EC2_METADATA_DISABLED="true")
    for failure in failures:
        url, problem = FAILURES[failure]
        env = anonymous if failure == "credentials" else None
        line = one_line_error(ipmix(name, url, *rest, env=env))
        assert line.startswith(f"Error: {url}: {problem}"), line
    assert not (tmp_path / "sheet.png").exists()


def test_a_deep_check_holds_a_few_shards_at_a_time(bucket, outputs):
    """Shards are fetched a few ahead and each deleted once the caller moves on; the mirror
    folder goes with the block."""
    url = ObjectURL.parse(upload(outputs[0], "window"))
    with mirrored(url) as mirror:
        folder, shards = mirror.folder, mirror.manifest.shards
        held = []
        for record, path in mirror.fetched(shards, ahead=2):
            assert path == mirror.shard_path(record) and path.is_file()
            held.append(len(list(folder.rglob("shard-*.h5"))))
        assert list(folder.rglob("shard-*.h5")) == []
    assert len(held) == len(shards) and max(held) <= 3, held
    assert not folder.exists()
