"""Checkpoint/resume: a driver killed mid-fit (SIGKILL) resumes to exactly the uninterrupted model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jobutil import ROOT, assert_user_error, describe, job_env, run_job_in_process, write_csv
from kmeans_dist import KMeans

K = 40
ARGS = ["--k", str(K), "--init", "random", "--seed", "1", "--features", "a,b", "--max-iter", "60"]


@pytest.fixture(scope="module")
def uniform(tmp_path_factory):
    """Uniform noise: no structure, so Lloyd needs many iterations to settle."""
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 100, size=(40_000, 2))
    path = write_csv(tmp_path_factory.mktemp("ckpt") / "uniform.csv", ["id", "a", "b"],
                     [[str(i), *r] for i, r in enumerate(x)])
    return path


def read_csv(spark, path):
    return spark.read.option("header", True).option("inferSchema", True).csv(str(path))


def wait_for_iteration(proc: subprocess.Popen, ckpt: str, at_least: int, log) -> int:
    """Poll the checkpoint until it records ``at_least`` iterations; returns the one seen."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the job ended before it could be killed: {log.read_text()}"
        try:
            it = json.loads(open(ckpt).read())["iteration"]
            if it >= at_least:
                return it
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.005)
    raise AssertionError("no checkpoint written in time")


def test_killed_driver_resumes_to_the_uninterrupted_model(spark, uniform, tmp_path):
    ckpt_dir, out = tmp_path / "ckpt", tmp_path / "out"
    cmd = [sys.executable, "jobs/train.py", "--input", str(uniform), *ARGS,
           "--checkpoint", str(ckpt_dir), "--output", str(out), "--master", "local[2]"]
    log = tmp_path / "killed.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=job_env(), stdout=sink, stderr=sink,
                                start_new_session=True)
    try:
        killed_at = wait_for_iteration(proc, str(ckpt_dir / "checkpoint.json"), 3, log)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its JVM, with no chance to clean up
        proc.wait()
    assert not out.exists()  # nothing half-written
    saved = json.loads((ckpt_dir / "checkpoint.json").read_text())

    resumed = run_job_in_process("jobs/train.py", "--input", uniform, *ARGS, "--checkpoint",
                                 ckpt_dir, "--resume", "--output", out)
    assert resumed.returncode == 0, describe(resumed)
    model = json.loads((out / "model.json").read_text())
    # the first iterations come from the checkpoint (a fresh run would not repeat their timings)
    done = saved["iteration"]
    assert done >= killed_at and model["history"][:done] == saved["runs"][0]["history"]

    alone = KMeans(K, init="random", seed=1, max_iter=60).fit(read_csv(spark, uniform),
                                                               ["a", "b"])
    assert model["n_iter"] == alone.n_iter > killed_at  # really interrupted mid-fit
    np.testing.assert_allclose(np.array(model["centroids"]), alone.centroids, rtol=0,
                               atol=1e-12)
    got = {r["id"]: r["cluster"] for r in spark.read.parquet(str(out / "assignments")).collect()}
    want = {r["id"]: r["cluster"] for r in alone.transform(read_csv(spark, uniform)).collect()}
    assert got == want
    assert [h["moved"] for h in model["history"]] == [h["moved"] for h in alone.history]


def test_checkpoint_of_other_parameters_is_refused(uniform, tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    first = run_job_in_process("jobs/train.py", "--input", uniform, *ARGS, "--max-iter", "2",
                               "--checkpoint", ckpt_dir, "--output", tmp_path / "o1")
    assert first.returncode == 0, describe(first)
    assert json.loads((ckpt_dir / "checkpoint.json").read_text())["iteration"] == 2
    other = run_job_in_process("jobs/train.py", "--input", uniform, *ARGS, "--max-iter", "2",
                               "--distance", "cosine", "--checkpoint", ckpt_dir, "--resume",
                               "--output", tmp_path / "o2")
    assert_user_error(other, "checkpoint.json", "other input data or parameters")
    assert not (tmp_path / "o2").exists()


def test_resume_needs_a_checkpoint():
    with pytest.raises(ValueError, match="resume needs a checkpoint directory"):
        KMeans(3, resume=True)


# --------------------------------------------------------------------------- what a resume accepts

#: the same count, sums, means and per-feature variances, other rows: moments cannot tell them
#: apart, the rows' digest must
EQUAL_MOMENTS = (np.array([[-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0]] * 3),
                 np.array([[-1.0, 1.0], [1.0, -1.0], [0.0, 0.0], [0.0, 0.0]] * 3))


def test_rows_digest_is_order_free_and_tells_other_rows_apart():
    from kmeans_dist.tasks import digest_rows

    rng = np.random.default_rng(5)
    x, w = rng.normal(size=(1000, 3)), rng.uniform(0.5, 2, size=1000)
    whole = digest_rows(x, w)
    perm = rng.permutation(1000)
    parts = [digest_rows(x[perm][a:b], w[perm][a:b]) for a, b in ((0, 1), (1, 400), (400, 1000))]
    assert sum(parts) % 2**64 == whole  # any order, any split into blocks and partitions
    a, b = EQUAL_MOMENTS
    assert np.array_equal(a.mean(0), b.mean(0)) and np.array_equal(a.var(0), b.var(0))
    assert digest_rows(a) != digest_rows(b)
    assert digest_rows(x[:, ::-1]) != digest_rows(x)  # the same values in other columns
    assert digest_rows(x, w * 2) != whole and digest_rows(x) != whole  # weights count
    moved = x.copy()
    moved[17, 1] = np.nextafter(moved[17, 1], np.inf)  # one bit of one value
    assert digest_rows(moved, w) != whole
    assert digest_rows(np.array([[-0.0, 1.0]])) == digest_rows(np.array([[0.0, 1.0]]))


def _frame(spark, x, partitions=2):
    return spark.createDataFrame([tuple(map(float, r)) for r in x], ["a", "b"]).repartition(
        partitions)


def test_resume_refuses_other_rows_with_equal_moments_and_another_seed(spark, tmp_path):
    """Refused: other rows with the same moments, another seed given, other given centres.
    Accepted: the same rows in another order and partitioning, and no seed given."""
    from kmeans_dist.errors import UserError

    a, b = EQUAL_MOMENTS
    ckpt = str(tmp_path / "ckpt")
    fit = dict(init="random", max_iter=2, checkpoint=ckpt)
    first = KMeans(2, seed=1, **fit).fit(_frame(spark, a))
    for why, k_means, rows in (("other rows, equal moments", KMeans(2, seed=1, **fit), b),
                               ("another seed", KMeans(2, seed=2, **fit), a),
                               ("other explicit centres", KMeans(2, init=a[:2] * 2, seed=1,
                                                                 max_iter=2, checkpoint=ckpt), a)):
        k_means.resume = True
        with pytest.raises(UserError, match="was written for other input data or parameters"):
            k_means.fit(_frame(spark, rows))
    # the same rows in another order and partitioning are the same data: resumed (the history,
    # timings included, comes from the checkpoint: nothing was recomputed), the same model
    resumed = KMeans(2, seed=1, resume=True, **fit).fit(_frame(spark, a[::-1], partitions=3))
    assert resumed.history == first.history
    np.testing.assert_array_equal(resumed.centroids, first.centroids)
    # a seed left to chance takes the checkpoint's (and the model says which)
    unseeded = KMeans(2, resume=True, **fit).fit(_frame(spark, a))
    assert unseeded.history == first.history and unseeded.params["seed"] == 1


@pytest.mark.parametrize("content, reason", [
    (b'{"format_version": 1, "fingerp', "is not JSON"),
    (b"\xff\xfe\x00not text", "cannot be read"),
    (b'{"format_version": 99}', "is not a kmeans-dist checkpoint"),
    (None, "is not a file"),  # a directory where the file should be
])
def test_unreadable_checkpoint_is_an_error_naming_the_file(spark, tmp_path, content, reason):
    from kmeans_dist.checkpoint import Checkpoint
    from kmeans_dist.errors import UserError

    path = tmp_path / "checkpoint.json"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(UserError, match=f"^checkpoint {path} {reason}"):
        Checkpoint(str(tmp_path), "0" * 64).load()


def test_missing_checkpoint_starts_and_says_so_unreadable_one_exits_2(spark, tmp_path, caplog):
    import logging

    a, _ = EQUAL_MOMENTS
    data = write_csv(tmp_path / "a.csv", ["a", "b"], a)
    ckpt = tmp_path / "ckpt"
    args = ["--input", data, "--k", "2", "--init", "random", "--seed", "1", "--checkpoint", ckpt,
            "--resume"]
    with caplog.at_level(logging.INFO, logger="kmeans_dist"):
        started = KMeans(2, seed=1, init="random", checkpoint=str(ckpt),
                         resume=True).fit(_frame(spark, a))
    assert f"no checkpoint at {ckpt}/checkpoint.json: starting from the beginning" in caplog.text
    assert started.n_iter >= 1 and (ckpt / "checkpoint.json").exists()
    (ckpt / "checkpoint.json").write_text('{"format_version": 1, "iter')  # cut short
    (ckpt / ".checkpoint.json.crc").unlink()  # Hadoop's checksum would refuse it first
    proc = run_job_in_process("jobs/train.py", *args, "--output", tmp_path / "out")
    assert_user_error(proc, f"checkpoint {ckpt}/checkpoint.json is not JSON")
    assert not (tmp_path / "out").exists()
