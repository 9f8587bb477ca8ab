"""Outputs survive a killed job: the commit protocols of kmeans_dist.commit, on the local disk
and on an S3 server (moto's, on 127.0.0.1), each job SIGKILLed at a named commit point.

A job process is paused at the point the test names (``KMEANS_DIST_TEST_PAUSE_AT``; it writes its
pid into a marker file and waits), then killed with its whole process group (its JVM and Python
workers) by SIGKILL. A reader (``KMeansModel.load``, ``io.read_text`` and ``commit.resolve``:
what ``--previous-model``, ``--previous-assignments`` and the assign job read through) must then
see the old complete output or the new complete one, never a mix and never nothing; the next run
must clean up what the killed one left.

Two kinds of job process:

- ``tests/commit_writer.py``: no Spark, so ``io`` goes through pyarrow's filesystems, the code
  path of every job on Spark Connect; its Parquet is written with pyarrow where a Connect server
  would write it with Spark. It runs on the local disk (rename), the local disk committed by
  manifest (``KMEANS_DIST_MANIFEST_SCHEMES=file``) and the S3 server (manifest).
- real train jobs on classic Spark (Hadoop's FileSystem) on the local disk, by rename and by
  manifest (the latter reading its input and ``--init-model`` through a manifest). Hadoop's s3a
  needs the hadoop-aws jar, which cannot be fetched here (no Maven repository is reachable), so
  classic Spark is not run against the S3 server.

This module runs in its own pytest process (``-m commit``, see the Makefile).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from commit_writer import ROWS_PER_PART, write_output
from jobutil import ROOT, job_env, write_csv
from kmeans_dist import commit, io
from kmeans_dist.checkpoint import Checkpoint
from kmeans_dist.model import KMeansModel

pytestmark = pytest.mark.commit

BUCKET = "kmeans-commit-tests"
WRITER = str(ROOT / "tests" / "commit_writer.py")
PAUSE_TIMEOUT = 240
IRIS_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]

#: (point, what a reader must see after a kill there while v2 replaces a complete v1)
RENAME_POINTS = [("begin", "v1"), ("wrote model.json", "v1"), ("staged", "v1"),
                 ("aside", "v1"), ("replaced", "v2")]
MANIFEST_POINTS = [("begin", "v1"), ("wrote model.json", "v1"), ("before-manifest", "v1"),
                   ("after-manifest", "v2")]


# --------------------------------------------------------------------------- the S3 server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on 127.0.0.1 (a thread of this process, stopped at the end); this
    process and the job processes reach it through the AWS_* variables pyarrow reads."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        import boto3

        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield env
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def storage(kind: str, request, tmp_path: Path, monkeypatch) -> tuple[str, dict[str, str]]:
    """Where an output of this kind of storage goes, and the environment a job needs for it."""
    if kind == "s3":
        return f"s3a://{BUCKET}/{tmp_path.name}/out", request.getfixturevalue("s3")
    env = {commit.MANIFEST_SCHEMES_ENV: "file"} if kind == "local-manifest" else {}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return str(tmp_path / "out"), env


# --------------------------------------------------------------------------- killing a job


class Paused:
    """A job process started to pause at a commit point; ``kill`` SIGKILLs its process group."""

    def __init__(self, cmd: list[str], point: str, env: dict[str, str], log: Path,
                 skip: int = 0) -> None:
        self.point, self.log = point, log
        self.marker = log.with_suffix(".paused")
        full_env = {**job_env(), **env, commit.PAUSE_AT_ENV: point,
                    commit.PAUSE_FILE_ENV: str(self.marker), commit.PAUSE_SKIP_ENV: str(skip)}
        with open(log, "w") as sink:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=sink,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def wait_paused(self) -> None:
        deadline = time.monotonic() + PAUSE_TIMEOUT
        while not self.marker.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"the job never reached {self.point!r} "
                                     f"(exit {self.proc.returncode}):\n{self.log.read_text()}")
            time.sleep(0.05)
        assert int(self.marker.read_text()) == self.proc.pid  # the job itself stopped there

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the job, its JVM and its workers
        self.proc.wait()


def killed_writer(out: str, version: str, point: str, env: dict[str, str], tmp: Path) -> None:
    paused = Paused([sys.executable, WRITER, out, version, "--overwrite"], point, env,
                    tmp / f"writer-{uuid.uuid4().hex[:6]}.log")
    try:
        paused.wait_paused()
    finally:
        paused.kill()


# --------------------------------------------------------------------------- readers


def read_parquet(paths: list[str]) -> pa.Table:
    """The Parquet files (or directories) at ``paths``, through pyarrow's filesystems."""
    fs = io._fs()
    tables = []
    for path in paths:
        filesystem, inner = fs._fs(path)
        tables.append(pq.read_table(inner, filesystem=filesystem))
    return pa.concat_tables(tables, promote_options="default")


def seen(out: str) -> str:
    """The version a reader sees in a commit_writer output; fails on a mix of two runs."""
    version = KMeansModel.load(f"{out}/model.json").params["version"]
    rows = read_parquet(commit.resolve(io._fs(), f"{out}/assignments"))
    assert sorted(rows.column("row").to_pylist()) == list(range(2 * ROWS_PER_PART))
    assert set(rows.column("version").to_pylist()) == {version}, "assignments of another run"
    assert json.loads(io.read_text(f"{out}/report.json"))["version"] == version
    return version


def leftovers(kind: str, out: str) -> list[str]:
    """What is there beside the committed output: hidden siblings (rename) or entries of the
    directory other than the manifest and its run (manifest)."""
    fs = io._fs()
    if kind == "local":
        parent, name = os.path.split(out)
        return [n for n in os.listdir(parent) if n.startswith(f".{name}.")]
    run = commit.read_manifest(fs, out)["run"]
    return [n for n in fs.names(out) if n not in (commit.SUCCESS, run)]


# --------------------------------------------------------------------------- pyarrow's filesystems


CASES = ([("local", *p) for p in RENAME_POINTS]
         + [(kind, *p) for kind in ("local-manifest", "s3") for p in MANIFEST_POINTS])


@pytest.mark.parametrize("kind,point,expected", CASES)
def test_an_overwrite_killed_at_any_commit_point_leaves_one_complete_output(
        kind, point, expected, request, tmp_path, monkeypatch):
    out, env = storage(kind, request, tmp_path, monkeypatch)
    write_output(out, "v1", overwrite=False)
    assert seen(out) == "v1"

    killed_writer(out, "v2", point, env, tmp_path)
    if point == "aside":  # the old output is only aside now: the reader must fall back on it
        assert not io.exists(out)
    assert seen(out) == expected, f"killed at {point!r}"

    io.check_output_dir(out, overwrite=True)  # what the next run does first
    assert seen(out) == expected
    write_output(out, "v3", overwrite=True)
    assert seen(out) == "v3"
    assert leftovers(kind, out) == []


def test_a_killed_first_run_leaves_no_output_and_the_next_run_cleans_it(s3, tmp_path):
    out = f"s3a://{BUCKET}/{tmp_path.name}/first"
    killed_writer(out, "v1", "before-manifest", s3, tmp_path)
    fs = io._fs()
    assert any(n.startswith(commit.RUN_PREFIX) for n in fs.names(out))  # its files are there...
    with pytest.raises(FileNotFoundError, match="holds no committed output"):
        KMeansModel.load(f"{out}/model.json")  # ...and invisible
    with pytest.raises(FileNotFoundError, match="holds no committed output"):
        commit.resolve(fs, f"{out}/assignments")
    write_output(out, "v2", overwrite=False)  # a failed run's files are no existing output
    assert seen(out) == "v2"
    assert leftovers("s3", out) == []


def test_a_run_that_fails_deletes_its_files_and_keeps_the_old_output(s3, tmp_path):
    out = f"s3a://{BUCKET}/{tmp_path.name}/failed"
    write_output(out, "v1", overwrite=False)
    with pytest.raises(RuntimeError, match="lost the cluster"):
        with io.staged_dir(out, overwrite=True) as where:
            io.write_text(f"{where}/model.json", "half of a run\n")
            raise RuntimeError("lost the cluster")
    assert seen(out) == "v1"
    assert leftovers("s3", out) == []


def test_manifest_lists_exactly_the_files_of_the_run(s3, tmp_path):
    out = f"s3a://{BUCKET}/{tmp_path.name}/listed"
    write_output(out, "v1", overwrite=False)
    manifest = commit.read_manifest(io._fs(), out)
    run = manifest["run"]
    assert manifest["files"] == [f"{run}/assignments/part-0.parquet",
                                 f"{run}/assignments/part-1.parquet",
                                 f"{run}/model.json", f"{run}/report.json"]
    # a file that is not listed is not read, even inside the committed run's directory
    io.write_bytes(f"{out}/{run}/assignments/part-9.parquet", b"not parquet")
    assert seen(out) == "v1"


def test_object_store_writes_small_files_in_one_put(s3, tmp_path):
    """No temporary object on S3 (a copy there would not be atomic either): the PUT is."""
    import boto3

    key = f"{tmp_path.name}/models/m.json"
    KMeansModel([[1.0]], ["a"], params={"version": "put"}).save(f"s3a://{BUCKET}/{key}")
    listed = boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=f"{tmp_path.name}/")
    objects = [o["Key"] for o in listed["Contents"] if not o["Key"].endswith("/")]  # not dirs
    assert objects == [key]
    assert KMeansModel.load(f"s3://{BUCKET}/{key}").params == {"version": "put"}


# --------------------------------------------------------------------------- classic Spark jobs


@pytest.fixture(scope="module")
def iris(tmp_path_factory):
    from sklearn.datasets import load_iris

    d = tmp_path_factory.mktemp("commit_jobs")
    x = load_iris().data
    path = write_csv(d / "iris.csv", IRIS_FEATURES, x)
    return {"dir": d, "csv": path, "x": x}


def _committed_start(d: Path, x: np.ndarray) -> str:
    """An output committed by manifest holding a model (three iris rows as centres) and the iris
    rows (Parquet, one part per half), with a failed later run's garbage beside them."""
    out = str(d / "start")
    model = KMeansModel(x[[0, 50, 100]], IRIS_FEATURES)
    with io.staged_dir(out) as where:
        model.save(f"{where}/model.json")
        for part in (0, 1):
            half = x[75 * part:75 * (part + 1)]
            buf = pa.BufferOutputStream()
            pq.write_table(pa.table({f: half[:, j] for j, f in enumerate(IRIS_FEATURES)}), buf)
            io.write_bytes(f"{where}/rows/part-{part}.parquet", buf.getvalue().to_pybytes())
    garbage = d / "start" / f"{commit.RUN_PREFIX}29990101T000000Z-deadbeef"
    (garbage / "rows").mkdir(parents=True)
    (garbage / "model.json").write_text("{not a model")
    (garbage / "rows" / "part-0.parquet").write_bytes(b"not parquet")
    return out


def _train(data: str, out: str, *extra: str) -> list[str]:
    return [sys.executable, "jobs/train.py", "--input", data, "--k", "3", "--seed", "1",
            "--features", ",".join(IRIS_FEATURES), "--output", out, "--overwrite",
            "--master", "local[1]", *extra]


CHECKPOINT_WRITER = """
import sys
from kmeans_dist.checkpoint import Checkpoint
checkpoint = Checkpoint(sys.argv[1], "fingerprint")
for iteration in (1, 2, 3):
    checkpoint.save([(3, 1)], [0.1], iteration, [{"iteration": iteration}])
"""


@pytest.fixture(scope="module", autouse=True)
def started_jobs(request):
    """The classic-Spark train jobs, started (a JVM each) when the module starts, so that they
    get going while the tests above run. Each overwrites a complete output and pauses before
    it commits; ``killed_jobs`` waits for them and kills them (none start when no selected test
    needs them). The one committing by manifest also reads its input and its --init-model
    through a manifest, beside a failed run's garbage."""
    if not any("killed_jobs" in item.fixturenames for item in request.session.items):
        yield None
        return
    iris = request.getfixturevalue("iris")
    d = iris["dir"]
    manifest = {commit.MANIFEST_SCHEMES_ENV: "file"}
    specs = {"rename_aside": ({}, "aside"), "manifest_before": (manifest, "before-manifest")}
    os.environ.update(manifest)
    try:
        start = _committed_start(d, iris["x"])
        write_output(str(d / "manifest_before"), "v1", overwrite=False)
    finally:
        os.environ.pop(commit.MANIFEST_SCHEMES_ENV)
    write_output(str(d / "rename_aside"), "v1", overwrite=False)
    jobs = {
        "rename_aside": Paused(_train(str(iris["csv"]), str(d / "rename_aside")), "aside", {},
                               d / "rename_aside.log"),
        "manifest_before": Paused(
            _train(f"{start}/rows", str(d / "manifest_before"), "--init-model",
                   f"{start}/model.json"), "before-manifest", manifest,
            d / "manifest_before.log"),
    }
    try:
        yield {"specs": specs, "dir": d, "jobs": jobs}
    finally:
        for job in jobs.values():
            job.kill()


@pytest.fixture(scope="module")
def killed_jobs(started_jobs):
    """``started_jobs`` once each has paused at its point and been killed."""
    for job in started_jobs["jobs"].values():
        try:
            job.wait_paused()
        finally:
            job.kill()
    return started_jobs


@pytest.mark.parametrize("name", ["rename_aside", "manifest_before"])
def test_a_train_job_killed_while_committing_leaves_the_old_output(killed_jobs, name,
                                                                   monkeypatch):
    env, point = killed_jobs["specs"][name]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    out = str(killed_jobs["dir"] / name)
    if point == "aside":
        assert not os.path.exists(out)  # only the aside copy is left: readers fall back on it
    assert seen(out) == "v1", f"killed at {point!r}"
    if env:  # the killed run had written everything but the manifest: all there, unlisted
        # (and had read its input and --init-model through their manifest, not the garbage)
        listed = commit.read_manifest(io._fs(), out)["run"]
        killed = [n for n in os.listdir(out) if n.startswith(commit.RUN_PREFIX) and n != listed]
        assert len(killed) == 1
        with open(f"{out}/{killed[0]}/report.json") as f:
            assert json.load(f)["rows"] == 150  # both listed parts of its input
        assert any(n.startswith("part-") for n in os.listdir(f"{out}/{killed[0]}/assignments"))
    io.check_output_dir(out, overwrite=True)  # the next run's recovery
    assert os.path.isdir(out) and seen(out) == "v1"
    if not env:
        assert leftovers("local", out) == []


def test_a_checkpoint_write_killed_half_way_keeps_the_last_complete_checkpoint(tmp_path):
    """What --resume reads after a fit was killed while replacing its checkpoint (through
    pyarrow's local filesystem; the Hadoop one's replace is tests/test_commit_fs.py's)."""
    ckpt = tmp_path / "ckpt"
    paused = Paused([sys.executable, "-c", CHECKPOINT_WRITER, str(ckpt)],
                    "small-file-written checkpoint.json", {}, tmp_path / "checkpoint.log", skip=2)
    try:
        paused.wait_paused()
    finally:
        paused.kill()
    saved = Checkpoint(str(ckpt), "fingerprint").load()
    assert saved["iteration"] == 2  # the second write, complete; not the third, nor nothing
    newer = [json.loads((ckpt / n).read_text()) for n in os.listdir(ckpt) if n.endswith(".tmp")]
    assert [s["iteration"] for s in newer] == [3]  # the third was written, never put in place
