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
