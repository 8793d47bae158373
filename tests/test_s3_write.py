"""``ipmix augment --out s3://...`` against a real S3-compatible server on loopback
(``moto_server``): the objects must be the local run's files byte for byte, a SIGKILL
mid-upload then ``--resume`` must give the uninterrupted run's objects, and every failure a
user can cause is one line naming the object."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from interrupts import random_npz
from s3server import FlakyProxy, environment, s3  # noqa: F401 - the fixture

BUCKET = "ipmix-write"
N_IMAGES, COPIES, SHARD = 600, 2, 50  # 24 shards of 50 rows
BIG_IMAGES, BIG_SHARD = 3000, 100  # 60 shards: enough to kill a run mid-upload


@pytest.fixture(scope="module")
def bucket(s3, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    s3.make_bucket(BUCKET)
    with environment({"IPMIX_STAGE_DIR": str(tmp_path_factory.mktemp("stage"))}):
        yield s3


def ipmix(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The real CLI in a new process (it finds the server through the AWS environment)."""
    return subprocess.run(
        [sys.executable, "-m", "ipmix_cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=None if env is None else {**os.environ, **env},
    )


def augment_args(data: Path, bank: Path, shard: int = SHARD, seed: int = 3) -> list[object]:
    return [
        "augment", "--input", data, "--mixing-set", bank, "--copies", COPIES,
        "--shard-size", shard, "--seed", seed, "--quiet",
    ]  # fmt: skip


def local_files(entry: Path) -> dict[str, bytes]:
    """The entry file and every shard, keyed as they would be under the entry's prefix."""
    files = {entry.name: entry.read_bytes()}
    folder = entry.with_suffix(".shards")
    for shard in sorted(folder.glob("shard-*.h5")):
        files[f"{folder.name}/{shard.name}"] = shard.read_bytes()
    return files


def remote_files(server, prefix: str) -> dict[str, bytes]:
    return {k[len(prefix) + 1 :]: v for k, v in server.objects(BUCKET, prefix + "/").items()}


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_objects_are_the_local_files_byte_for_byte(bucket, bank, tmp_path):
    data = random_npz(tmp_path / "data.npz", N_IMAGES, seed=1)
    local = tmp_path / "local" / "out.h5"
    assert ipmix(*augment_args(data, bank), "--out", local).returncode == 0
    result = ipmix(*augment_args(data, bank), "--out", f"s3://{BUCKET}/same/out.h5")
    assert result.returncode == 0, result.stderr
    objects = remote_files(bucket, "same")
    expected = local_files(local)
    assert len(expected) == 1 + N_IMAGES * COPIES // SHARD
    assert sorted(objects) == sorted(expected)  # nothing else: no .work, no probe, no temp
    for name, content in expected.items():
        assert objects[name] == content, name
    # each shard object carries its own record, with the size it has
    head = bucket.client().head_object(Bucket=BUCKET, Key="same/out.shards/shard-00003.h5")
    record = json.loads(head["Metadata"]["ipmix-shard"])
    assert record["index"] == 3 and record["count"] == SHARD
    assert record["bytes"] == len(expected["out.shards/shard-00003.h5"])
    # a second run on the same URL refuses, in one line naming the object, and changes nothing
    again = ipmix(*augment_args(data, bank), "--out", f"s3://{BUCKET}/same/out.h5")
    line = one_line_error(again)
    assert f"s3://{BUCKET}/same/out.h5" in line and "--overwrite" in line
    assert remote_files(bucket, "same") == objects
    # --resume of a finished output with the same job recomputes nothing and keeps the bytes
    url = f"s3://{BUCKET}/same/out.h5"
    assert ipmix(*augment_args(data, bank), "--out", url, "--resume").returncode == 0
    assert remote_files(bucket, "same") == objects
    # another job refuses to resume into it, naming what differs
    other = ipmix(*augment_args(data, bank, seed=4), "--resume", "--out", url)
    assert "seed" in one_line_error(other)
    # --overwrite replaces it
    over = ipmix(*augment_args(data, bank, seed=4), "--overwrite", "--out", url)
    assert over.returncode == 0, over.stderr
    replaced = remote_files(bucket, "same")
    assert sorted(replaced) == sorted(objects)
    assert replaced["out.shards/shard-00000.h5"] != objects["out.shards/shard-00000.h5"]


def _kill_after_first_upload(args: list[object], prefix: str, server) -> subprocess.Popen:
    """Start the CLI in its own process group and SIGKILL it once the first shard object is
    in the bucket: the commit thread is then uploading the next one."""
    process = subprocess.Popen(
        [sys.executable, "-m", "ipmix_cli", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    client = server.client()
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            listed = client.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/out.shards/shard-")
            if listed.get("KeyCount", 0) >= 1:
                break
            time.sleep(0.005)
        assert process.poll() is None, "the run ended before it could be killed"
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    return process


def test_sigkill_mid_upload_then_resume_gives_the_uninterrupted_objects(bucket, bank, tmp_path):
    data = random_npz(tmp_path / "big.npz", BIG_IMAGES, seed=2)
    args = augment_args(data, bank, shard=BIG_SHARD)
    whole = ipmix(*args, "--out", f"s3://{BUCKET}/whole/out.h5")
    assert whole.returncode == 0, whole.stderr
    expected = remote_files(bucket, "whole")
    assert len(expected) == 1 + BIG_IMAGES * COPIES // BIG_SHARD

    _kill_after_first_upload([*args, "--out", f"s3://{BUCKET}/killed/out.h5"], "killed", bucket)
    left = remote_files(bucket, "killed")
    assert "out.h5" not in left  # no entry: a reader sees no output at all
    shards = {k: v for k, v in left.items() if k.startswith("out.shards/shard-")}
    assert 1 <= len(shards) < len(expected) - 1
    for name, content in shards.items():  # whatever is under a final name is complete
        assert content == expected[name], name

    # without --resume the unfinished output is refused, naming it
    refused = ipmix(*args, "--out", f"s3://{BUCKET}/killed/out.h5")
    assert "--resume" in one_line_error(refused)
    resumed = ipmix(*args, "--out", f"s3://{BUCKET}/killed/out.h5", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert remote_files(bucket, "killed") == expected


def test_user_errors_are_one_line_naming_the_object(bucket, bank, tmp_path):
    data = random_npz(tmp_path / "data.npz", 40, seed=3)
    args = augment_args(data, bank)
    line = one_line_error(ipmix(*args, "--out", "s3://no-such-bucket/x/out.h5"))
    assert line.endswith("s3://no-such-bucket/x/out.h5: the bucket does not exist"), line
    usage = ipmix(*args, "--out", "s3://just-a-bucket")  # click's usage error, exit status 2
    assert usage.returncode == 2 and "Traceback" not in usage.stderr
    assert "Invalid value for '--out': an s3:// location is s3://BUCKET/KEY" in usage.stderr
    no_credentials = {
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    env = {k: v for k, v in os.environ.items() if k not in no_credentials}
    env.update({k: v for k, v in no_credentials.items() if v})
    result = subprocess.run(
        [sys.executable, "-m", "ipmix_cli", *map(str, args), "--out", f"s3://{BUCKET}/c/out.h5"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    line = one_line_error(result)
    assert f"s3://{BUCKET}/c/out.h5" in line and "credentials" in line, line
    unreachable = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "IPMIX_S3_TRIES": "2"}
    started = time.monotonic()
    line = one_line_error(ipmix(*args, "--out", f"s3://{BUCKET}/u/out.h5", env=unreachable))
    assert "cannot reach the object store at http://127.0.0.1:9 after 2 tries" in line, line
    assert time.monotonic() - started < 60
    # none of the failed attempts left anything in the bucket
    assert remote_files(bucket, "c") == {} and remote_files(bucket, "u") == {}


def test_resume_remakes_a_cut_object_and_refuses_another_jobs(bucket, bank, tmp_path):
    """Resume keeps only objects whose record says they are this job's shard at this size: a
    shard object cut short is made again; a shard object of another job, with no record of
    the interrupted run, is refused rather than mixed in."""
    data = random_npz(tmp_path / "data.npz", N_IMAGES, seed=4)
    args = augment_args(data, bank)
    url = f"s3://{BUCKET}/reuse/out.h5"
    assert ipmix(*args, "--out", url).returncode == 0
    expected = remote_files(bucket, "reuse")
    client = bucket.client()
    client.delete_object(Bucket=BUCKET, Key="reuse/out.h5")  # as if killed before the entry
    key = "reuse/out.shards/shard-00002.h5"
    head = client.head_object(Bucket=BUCKET, Key=key)
    short = expected["out.shards/shard-00002.h5"][:-10]
    client.put_object(Bucket=BUCKET, Key=key, Body=short, Metadata=head["Metadata"])
    assert ipmix(*args, "--out", url, "--resume").returncode == 0
    assert remote_files(bucket, "reuse") == expected

    client.delete_object(Bucket=BUCKET, Key="reuse/out.h5")
    record = json.loads(head["Metadata"]["ipmix-shard"])
    record["attrs"]["job"] = "0" * 16
    client.put_object(
        Bucket=BUCKET,
        Key="reuse/out.shards/shard-00005.h5",
        Body=expected["out.shards/shard-00005.h5"],
        Metadata={"ipmix-shard": json.dumps(record)},
    )
    line = one_line_error(ipmix(*args, "--out", url, "--resume"))
    assert line.endswith(
        f"{url}: cannot resume: the finished shards here were made by another "
        "job (other inputs or options); pass --overwrite to start again"
    ), line
    assert ipmix(*args, "--out", url, "--overwrite").returncode == 0
    assert remote_files(bucket, "reuse") == expected


def test_dry_run_checks_the_bucket_and_writes_nothing(bucket, bank, tmp_path):
    data = random_npz(tmp_path / "data.npz", 100, seed=5)
    result = ipmix(*augment_args(data, bank), "--out", f"s3://{BUCKET}/dry/out.h5", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "nothing written" in result.stdout
    assert remote_files(bucket, "dry") == {}
    line = one_line_error(
        ipmix(*augment_args(data, bank), "--out", "s3://no-such-bucket/d.h5", "--dry-run")
    )
    assert "the bucket does not exist" in line


def test_dask_workers_upload_their_own_shards(bucket, bank, tmp_path):
    """``--backend dask`` with two real worker processes that cannot see the job's staging
    folder (each runs in a mount namespace with a tmpfs over it, as on another host) and
    stage on a disk of their own: they must read the job's work files from the bucket and
    upload the shards they make. The objects are the local run's byte for byte."""
    pytest.importorskip("distributed")
    from test_distributed import start_cluster

    data = random_npz(tmp_path / "data.npz", N_IMAGES, seed=7)
    local = tmp_path / "local" / "out.h5"
    assert ipmix(*augment_args(data, bank), "--out", local).returncode == 0
    job_stage = Path(os.environ["IPMIX_STAGE_DIR"])
    hidden = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f"mount -t tmpfs none {job_stage} && ls -A {job_stage}"],
        capture_output=True, text=True,
    )  # fmt: skip
    if hidden.returncode != 0:
        pytest.skip(f"no mount namespaces here: {hidden.stderr.strip()}")
    cluster = start_cluster(tmp_path / "cluster", n_workers=0)
    workers_stage = tmp_path / "workers-stage"
    workers = []
    try:
        for i in range(2):
            log = open(tmp_path / f"worker{i}.log", "wb")  # noqa: SIM115 - as long as the worker
            command = (
                f"mount -t tmpfs none {job_stage} && exec {sys.executable} -m dask worker "
                f"{cluster.address} --nworkers 1 --nthreads 1 --no-nanny --no-dashboard "
                f"--host 127.0.0.1 --name w{i} --local-directory {tmp_path / f'w{i}'}"
            )
            workers.append(
                subprocess.Popen(
                    ["unshare", "--mount", "--propagation", "private", "sh", "-c", command],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "IPMIX_STAGE_DIR": str(workers_stage)},
                )  # fmt: skip
            )
        import distributed

        with distributed.Client(cluster.address, set_as_default=False, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
        url = f"s3://{BUCKET}/dask/out.h5"
        result = ipmix(*augment_args(data, bank), "--out", url, "--scheduler", cluster.address)
        logs = "".join((tmp_path / f"worker{i}.log").read_text()[-1500:] for i in range(2))
        assert result.returncode == 0, result.stderr + logs
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=30)
        cluster.stop()
    assert remote_files(bucket, "dask") == local_files(local)
    staged = [p for p in workers_stage.rglob("*") if p.is_file()]
    assert workers_stage.is_dir() and staged == []  # used, and nothing left behind


def test_a_bank_goes_up_as_two_objects_and_serves_as_a_mixing_set(bucket, tmp_path):
    """``fractals generate --format h5 --out s3://...``: the objects are the local bank's
    files; ``augment --mixing-set s3://...`` then gives the pixels of the local bank."""
    generate = ["fractals", "generate", "--count", 8, "--size", 48, "--points", 4000, "--quiet"]
    h5 = [*generate, "--format", "h5"]
    assert ipmix(*h5, "--out", tmp_path / "bank").returncode == 0
    url = f"s3://{BUCKET}/banks/one"
    result = ipmix(*h5, "--out", url, "--preview", tmp_path / "sheet.png")
    assert result.returncode == 0, result.stderr
    objects = remote_files(bucket, "banks/one")
    assert objects == {
        name: (tmp_path / "bank" / name).read_bytes() for name in ("fractals.h5", "manifest.json")
    }
    assert (tmp_path / "sheet.png").stat().st_size > 0
    assert "--overwrite" in one_line_error(ipmix(*h5, "--out", url))
    assert "--format h5" in one_line_error(ipmix(*generate, "--out", f"s3://{BUCKET}/banks/png"))
    assert remote_files(bucket, "banks/png") == {}
    dask = ipmix(*h5, "--out", f"s3://{BUCKET}/banks/dask", "--scheduler", "tcp://127.0.0.1:9")
    assert "drop --backend dask" in one_line_error(dask)

    data = random_npz(tmp_path / "data.npz", 60, seed=8)
    outputs = {}
    for name, mixing in (("local", tmp_path / "bank"), ("remote", url)):
        out = tmp_path / f"{name}.h5"
        args = ["augment", "--input", data, "--mixing-set", mixing, "--out", out, "--quiet"]
        assert ipmix(*args).returncode == 0
        with h5py.File(out, "r") as f:
            outputs[name] = f["images"][()]
    assert np.array_equal(outputs["local"], outputs["remote"])
    missing = ["augment", "--input", data, "--out", tmp_path / "x.h5", "--quiet"]
    line = one_line_error(ipmix(*missing, "--mixing-set", f"s3://{BUCKET}/banks/none"))
    assert line.endswith(
        f"s3://{BUCKET}/banks/none: no bank there (no fractals.h5 object under it)"
    )


def test_a_dropped_connection_is_retried_then_reported(bucket, bank, tmp_path):
    """Through a proxy that cuts every connection: a short outage mid-run is ridden out by the
    bounded retries (the objects are those of a run with no outage); a lasting one stops the
    run with one line naming an object, leaves no entry, and --resume then finishes it."""
    data = random_npz(tmp_path / "data.npz", N_IMAGES, seed=9)
    args = augment_args(data, bank, shard=25)
    assert ipmix(*args, "--out", f"s3://{BUCKET}/calm/out.h5").returncode == 0
    expected = remote_files(bucket, "calm")
    proxy = FlakyProxy(bucket.port)
    flaky = {"AWS_ENDPOINT_URL": proxy.endpoint, "IPMIX_S3_TRIES": "8", "IPMIX_S3_BACKOFF": "0.2"}
    client = bucket.client()

    def start(prefix: str, env: dict[str, str]) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, "-m", "ipmix_cli", *map(str, args), "--out", f"s3://{BUCKET}/{prefix}/out.h5"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **env},
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            if client.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/out.shards/shard-").get(
                "KeyCount", 0
            ):
                break
            time.sleep(0.005)
        assert process.poll() is None, "the run ended before the link could be cut"
        return process

    try:
        process = start("outage", flaky)
        proxy.cut()
        time.sleep(0.6)
        proxy.mend()
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
        assert remote_files(bucket, "outage") == expected

        process = start("lasting", {**flaky, "IPMIX_S3_TRIES": "3", "IPMIX_S3_BACKOFF": "0.05"})
        proxy.cut()
        _, stderr = process.communicate(timeout=120)
        proxy.mend()
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert process.returncode != 0 and len(lines) == 1 and "Traceback" not in stderr, stderr
        assert f"s3://{BUCKET}/lasting/out" in lines[0], lines[0]
        assert f"cannot reach the object store at {proxy.endpoint} after 3 tries" in lines[0]
        left = remote_files(bucket, "lasting")
        assert "out.h5" not in left and left, left
        resumed = ipmix(*args, "--out", f"s3://{BUCKET}/lasting/out.h5", "--resume")
        assert resumed.returncode == 0, resumed.stderr
        assert remote_files(bucket, "lasting") == expected
    finally:
        proxy.close()


def test_what_augment_writes_to_a_bucket_reads_back_as_the_local_output(bucket, bank, tmp_path):
    """The issue's acceptance: ``--out s3://...`` read back through ``ShardReader`` gives
    every row of every view of the same command run with a local ``--out``."""
    from ipmix_cli.readers import ShardReader

    data = random_npz(tmp_path / "data.npz", 200, seed=10)
    args = [*augment_args(data, bank, shard=40), "--jsd"]
    local = tmp_path / "local" / "out.h5"
    assert ipmix(*args, "--out", local).returncode == 0
    url = f"s3://{BUCKET}/readback/out.h5"
    assert ipmix(*args, "--out", url).returncode == 0
    views = ("clean", "images", "images2")
    extras = ("source_index", "copy_index", "row")
    with (
        ShardReader(local, views=views, extras=extras) as here,
        ShardReader(url, views=views, extras=extras, cache_dir=tmp_path / "cache") as there,
    ):
        assert len(there) == len(here) == 200 * COPIES
        rows = np.random.default_rng(0).permutation(len(here))
        a, b = here.read(rows), there.read(rows)
        assert sorted(a) == sorted(b)
        for key in a:
            assert np.array_equal(a[key], b[key]), key
