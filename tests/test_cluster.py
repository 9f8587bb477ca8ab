"""The train job spark-submitted (client mode) to a real standalone cluster (master + 2 workers on
127.0.0.1) whose executors can import ``kmeans_dist`` only from the ``--py-files`` zip; its
result must match a local-mode fit from the same start exactly, and it must have run on the
default (resident) transport, not on a fallback.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kmeans_dist import KMeans
from kmeans_dist.packaging import build_zip
from standalone import (  # noqa: F401 - standalone_cluster is a fixture
    SPARK_BIN, Cluster, log_tail, no_site_python, run_logged, spark_env, spark_events,
    standalone_cluster, wrapper_calls,
)

ROOT = Path(__file__).resolve().parent.parent
FEATURES = ["f0", "f1", "f2", "f3"]
K = 4
ROWS = 20_000
SUBMIT_TIMEOUT = 300.0
IMPORT_CHECK = "import numpy, pyarrow, numba; import kmeans_dist; print(kmeans_dist.__file__)"


def write_blobs(dest: Path) -> tuple[Path, Path, np.ndarray]:
    """``data.csv`` (id, f0..f3: 4 slightly overlapping blobs) and ``init.csv`` (the first row of
    each blob, jittered); returns both paths and the init centroids."""
    rng = np.random.default_rng(7)
    centres = np.array([[0, 0, 0, 0], [4, 4, 0, 0], [0, 4, 4, 0], [4, 0, 0, 4]], dtype=float)
    blob = rng.integers(0, K, ROWS)
    x = centres[blob] + rng.normal(scale=1.0, size=(ROWS, len(FEATURES)))
    init = x[[np.flatnonzero(blob == j)[0] for j in range(K)]] + rng.normal(scale=0.1,
                                                                           size=(K, len(FEATURES)))
    data, init_csv = dest / "data.csv", dest / "init.csv"
    np.savetxt(data, np.column_stack([np.arange(ROWS), x]), delimiter=",", comments="",
               header=",".join(["id", *FEATURES]), fmt=["%d"] + ["%.17g"] * len(FEATURES))
    np.savetxt(init_csv, init, delimiter=",", comments="", header=",".join(FEATURES),
               fmt="%.17g")
    return data, init_csv, np.loadtxt(init_csv, delimiter=",", skiprows=1)


def import_kmeans(python: str | Path, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """``python -c IMPORT_CHECK`` away from the repo (so the current directory cannot help)."""
    return subprocess.run([str(python), "-c", IMPORT_CHECK], cwd=cwd, env=spark_env(**env),
                          capture_output=True, text=True, timeout=120)


def test_no_site_python_sees_kmeans_dist_only_from_the_zip(tmp_path: Path) -> None:
    """The executors' wrapper hides the editable install; the shipped zip makes it importable."""
    wrapper = no_site_python(tmp_path / "python-no-site")
    zip_path = build_zip(tmp_path / "kmeans_dist.zip")

    editable = import_kmeans(sys.executable, tmp_path)
    assert editable.returncode == 0, editable.stderr
    assert Path(editable.stdout.strip()) == ROOT / "kmeans_dist" / "__init__.py"

    hidden = import_kmeans(wrapper, tmp_path)
    assert hidden.returncode != 0
    assert "No module named 'kmeans_dist'" in hidden.stderr, hidden.stderr

    shipped = import_kmeans(wrapper, tmp_path, PYTHONPATH=str(zip_path))
    assert shipped.returncode == 0, shipped.stderr
    assert shipped.stdout.strip() == f"{zip_path}/kmeans_dist/__init__.py"


@pytest.mark.cluster
def test_train_job_on_standalone_cluster_matches_local(
    standalone_cluster: Cluster, spark, tmp_path: Path
) -> None:
    """spark-submit jobs/train.py to the cluster; same model and labels as a local-mode fit."""
    started = time.perf_counter()
    data, init_csv, init = write_blobs(tmp_path)
    zip_path = build_zip(tmp_path / "kmeans_dist.zip")
    wrapper = no_site_python(tmp_path / "python-no-site")
    events, out, log = tmp_path / "events", tmp_path / "out", tmp_path / "submit.log"
    events.mkdir()
    conf = {
        "spark.pyspark.python": str(wrapper),
        "spark.pyspark.driver.python": sys.executable,  # else the driver would get the wrapper
        "spark.eventLog.enabled": "true",
        "spark.eventLog.dir": f"file://{events}",
        "spark.eventLog.compress": "false",
        "spark.executor.cores": "1",
        "spark.executor.memory": "1g",
        "spark.cores.max": "2",
        # two input splits (the CSV is far below the 4 MB minimum split): one task per executor
        "spark.sql.files.maxPartitionBytes": str(data.stat().st_size // 2 + 1),
        # start only once both executors are registered, else one may get every task
        "spark.scheduler.minRegisteredResourcesRatio": "1.0",
        "spark.scheduler.maxRegisteredResourcesWaitingTime": "120s",
        "spark.ui.enabled": "false",
    }
    cmd = [str(SPARK_BIN / "spark-submit"), "--master", standalone_cluster.master_url,
           "--deploy-mode", "client", "--py-files", str(zip_path),
           *[arg for key, value in conf.items() for arg in ("--conf", f"{key}={value}")],
           "jobs/train.py", "--input", str(data), "--k", str(K), "--init", str(init_csv),
           "--output", str(out), "--features", ",".join(FEATURES),
           "--driver-max-mb", "0"]  # these rows would fit in the driver: test the cluster's path
    env = spark_env(PYSPARK_PYTHON=str(wrapper), PYSPARK_DRIVER_PYTHON=sys.executable)
    code = run_logged(cmd, log, env, ROOT, SUBMIT_TIMEOUT)
    assert code == 0, f"spark-submit exited with {code}\n{log_tail(log, 60)}"
    submitted = time.perf_counter()

    # the executors ran Python through the wrapper (their cwd is WORK/app-*/N), one per worker
    executor_dirs = set(wrapper_calls(wrapper))
    assert len(executor_dirs) == 2, executor_dirs
    assert all(d.parent.parent == standalone_cluster.work_dir for d in executor_dirs)
    for stderr in standalone_cluster.work_dir.glob("app-*/*/stderr"):
        assert "No module named" not in stderr.read_text(errors="replace"), log_tail(stderr)
    # the work was spread over both executors, across several jobs
    log_events = spark_events(events)
    executors = {e["Task Info"]["Executor ID"] for e in log_events
                 if e["Event"] == "SparkListenerTaskEnd"}
    assert len(executors) == 2, executors
    assert sum(e["Event"] == "SparkListenerJobStart" for e in log_events) >= 2

    # the same fit in local mode, in this process
    df = spark.read.option("header", True).option("inferSchema", True).csv(str(data))
    model = KMeans(K, init=init, driver_max_mb=0).fit(df, FEATURES)
    expected = model.transform(df).select("id", "cluster").toPandas().sort_values("id")
    fitted = json.loads((out / "model.json").read_text())
    assert fitted["k"] == K and fitted["features"] == FEATURES
    # the default distributed transport ran on the cluster as itself: resident tasks, one per
    # executor, holding their blocks in memory, no fallback to arrow-files and no reconnect
    ran = fitted["transport"]
    assert ran["name"] == "resident" and "fallback" not in ran and "requested" not in ran, ran
    assert ran["storage"] == "memory" and ran["partitions"] == 2, ran
    assert ran["reconnects"] == 0 and ran["held_bytes"] >= ROWS * len(FEATURES) * 8, ran
    assert model.transport["name"] == "resident" and "fallback" not in model.transport
    assert fitted["n_iter"] == model.n_iter
    assert fitted["inertia"] == pytest.approx(model.inertia, rel=1e-9)
    np.testing.assert_allclose(np.array(fitted["centroids"]), model.centroids, rtol=0,
                               atol=1e-9 * np.abs(model.centroids).max())
    assigned = pd.read_parquet(out / "assignments").sort_values("id")
    assert sorted(assigned.columns) == sorted(["id", *FEATURES, "cluster"])
    assert len(assigned) == ROWS
    np.testing.assert_array_equal(assigned["id"].to_numpy(), expected["id"].to_numpy())
    np.testing.assert_array_equal(assigned["cluster"].to_numpy(), expected["cluster"].to_numpy())

    done = time.perf_counter()
    print(f"\ncluster test: spark-submit {submitted - started:.1f} s, local reference "
          f"{done - submitted:.1f} s, total {done - started:.1f} s ({model.n_iter} iterations)")
