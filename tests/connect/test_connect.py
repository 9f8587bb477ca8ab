"""Every entry point on a Spark Connect session: the API, the jobs (--remote, SPARK_REMOTE) and
the pyspark.ml drop-in. References: scikit-learn's Lloyd from the same initial centres, the same
job run on classic Spark, brute-force numpy labels, and pyspark.ml's own KMeans on the same
Connect server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from pyspark import cloudpickle
from sklearn.cluster import KMeans as SKKMeans
from sklearn.metrics import silhouette_score

from connectutil import classic_mode
from jobutil import ROOT, TIMEOUT, describe, job_env, listing, scala_list, write_csv
from kmeans_dist import KMeans, KMeansModel

RTOL = 1e-9
# the task functions below run on the server's Python workers, which cannot import this module
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def blobs(n: int = 2000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.vstack([rng.normal(c, 1.0, (n, 3)) for c in ((0, 0, 0), (5, 5, 0), (0, 5, 5))])


def sklearn_lloyd(x: np.ndarray, init: np.ndarray) -> SKKMeans:
    return SKKMeans(len(init), init=init, n_init=1, algorithm="lloyd", tol=0.0,
                    max_iter=300).fit(x)


@pytest.fixture(scope="module")
def data(spark):
    x = blobs()
    pdf = pd.DataFrame(x, columns=["a", "b", "c"]).assign(id=np.arange(len(x)))
    return x, spark.createDataFrame(pdf)


def run_remote(job: str, *args, env: dict | None = None) -> subprocess.CompletedProcess:
    """A job as a Spark Connect client (no JVM of its own): ``env`` names the server."""
    return subprocess.run([sys.executable, job, *map(str, args)], cwd=ROOT,
                          env={**job_env(), **(env or {})}, capture_output=True, text=True,
                          timeout=TIMEOUT)


def test_fit_on_connect_is_the_classic_fit_and_scikit_learns_lloyd(server, data):
    """The same fit from the same start on Connect (its transports: the client process, the
    default for this small data; arrow-files, the default for larger data; arrow) and, in the
    server's own classic session, on the classic distributed default transport (resident):
    labels equal, centres to 1e-9; both are scikit-learn's Lloyd."""
    x, df = data
    init = x[[0, 1, 2]]  # all from one blob: several iterations
    model = KMeans(3, init=init).fit(df, ["a", "b", "c"])
    assert model.transport["name"] == "driver" and model.transport["rows"] == len(x)
    for name in ("arrow-files", "arrow"):
        other = KMeans(3, init=init, transport=name).fit(df, ["a", "b", "c"])
        assert other.transport["name"] == name
        assert np.array_equal(other.centroids, model.centroids), name
        assert [h["moved"] for h in other.history] == [h["moved"] for h in model.history]
    # the fits' executor-local files (blocks, labels) were written under the executors' local
    # directory (the first fit of this server made kmeans_dist/ there) and removed at their end
    fits_dir = os.path.join(executor_local_dir(df.sparkSession), "kmeans_dist")
    assert os.path.isdir(fits_dir) and os.listdir(fits_dir) == []
    labelled = model.transform(df, distance_col="dist").orderBy("id").toPandas()
    host = server[0]
    with classic_mode():
        rows = labelled[["a", "b", "c", "id"]].copy()
        rows.attrs.clear()  # Connect's plan metrics, which classic Arrow cannot serialise
        classic_df = host.createDataFrame(rows)
        classic = KMeans(3, init=init, transport="resident").fit(classic_df, ["a", "b", "c"])
        assert classic.transport["name"] == "resident"
        classic_labels = classic.transform(classic_df).orderBy("id").toPandas()["cluster"]
    np.testing.assert_allclose(model.centroids, classic.centroids, rtol=RTOL, atol=1e-12)
    assert (model.n_iter, model.cluster_sizes) == (classic.n_iter, classic.cluster_sizes)
    assert np.array_equal(labelled["cluster"].to_numpy(), classic_labels.to_numpy())

    ref = sklearn_lloyd(x, init)
    np.testing.assert_allclose(model.centroids, ref.cluster_centers_, rtol=RTOL, atol=1e-12)
    assert model.n_iter == ref.n_iter_ > 2
    assert model.inertia == pytest.approx(ref.inertia_, rel=1e-9)
    assert np.array_equal(labelled["cluster"].to_numpy(), ref.labels_)
    nearest = np.linalg.norm(x - ref.cluster_centers_[ref.labels_], axis=1)
    np.testing.assert_allclose(labelled["dist"].to_numpy(), nearest, rtol=1e-9)


def _local_dirs(batches):
    import pyarrow as pa

    for _ in batches:
        pass
    yield pa.RecordBatch.from_pydict({"dirs": [os.environ["SPARK_LOCAL_DIRS"]]})


def executor_local_dir(spark) -> str:
    """The directory the server's Python workers are given as their local directory (the first
    of ``SPARK_LOCAL_DIRS``), where the DataFrame transports keep their files."""
    return spark.range(1).mapInArrow(_local_dirs, "dirs string").first().dirs.split(",")[0]


def _blas_seen() -> dict:
    """What a Python worker of the server sees: its BLAS threads, its task's CPUs, and the
    thread variables of its environment."""
    from pyspark import TaskContext
    from threadpoolctl import threadpool_info

    return {"blas": [int(p["num_threads"]) for p in threadpool_info() if p["user_api"] == "blas"],
            "cpus": TaskContext.get().cpus(),
            "env": {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}}


def _blas_in_task(blocks, _):
    """A task function, as the fit's passes run them."""
    list(blocks)
    return _blas_seen()


def _blas_outside(batches):
    """A plain mapInArrow function: the same workers, outside the fit's tasks."""
    import pyarrow as pa

    for _ in batches:
        pass
    yield pa.RecordBatch.from_pydict({"seen": [json.dumps(_blas_seen())]})


def test_blas_runs_one_thread_per_task_cpu_whatever_the_workers_environment_says(data):
    """The server's Python workers do not get the server's spark.executorEnv thread settings
    (the fixture sets OMP_NUM_THREADS=1 there), so their BLAS would use every core of the
    machine; inside the fit's tasks it runs one thread per task CPU (1). The arrow-files
    transport's files live under the executors' local directory while it holds them."""
    from kmeans_dist import data as kd_data
    from kmeans_dist.transport import ArrowFilesTransport

    _, df = data
    outside = [json.loads(r.seen) for r in df.mapInArrow(_blas_outside, "seen string").collect()]
    assert all(o["env"] == {"OMP_NUM_THREADS": None, "OPENBLAS_NUM_THREADS": None}
               for o in outside), outside
    # left to that environment, BLAS runs more threads than a task has CPUs (one per core: 2
    # here); inside the fit's tasks every BLAS the worker has loaded runs 1, scipy's OpenBLAS
    # (loaded beside numpy's by an earlier import) included
    assert all(max(o["blas"]) > o["cpus"] for o in outside), outside
    transport = ArrowFilesTransport(kd_data.packing(df, ["a", "b", "c"]), 3)
    try:
        inside = transport.run(_blas_in_task, None)
        held = os.path.join(executor_local_dir(df.sparkSession), "kmeans_dist",
                            transport.token)
        assert os.path.isdir(held) and os.listdir(held)
    finally:
        transport.release()
    assert not os.path.exists(held)
    assert inside and all(t["blas"] and set(t["blas"]) == {t["cpus"]} == {1} for t in inside), \
        inside


def test_iterations_carry_job_tags(server, data):
    host, _ = server
    _, df = data
    model = KMeans(3, init="k-means++", seed=5, max_iter=4, transport="arrow-files").fit(
        df, ["a", "b", "c"])
    store = host.sparkContext._jsc.sc().statusStore()
    tags = {str(t) for job in scala_list(store.jobsList(None)) for t in scala_list(job.jobTags())}
    for it in range(1, model.n_iter + 1):
        wanted = f"kmeans_dist: iteration {it}/4; k=3"
        assert any(t.endswith(wanted) for t in tags), (wanted, sorted(tags)[-5:])


def test_train_job_with_remote_flag(server, tmp_path):
    """jobs/train.py --remote: every output, and the model scikit-learn's Lloyd gives from the
    same init file (the classic job's model is, see tests/test_train_job.py)."""
    x = blobs(300, seed=1)
    src = write_csv(tmp_path / "in.csv", ["a", "b", "c", "id"],
                    [(*r, str(i)) for i, r in enumerate(x)])
    init = write_csv(tmp_path / "init.csv", ["a", "b", "c"], x[[0, 1, 2]])
    out = tmp_path / "remote"
    proc = run_remote("jobs/train.py", "--input", src, "--k", 3, "--init", init, "--features",
                      "a,b,c", "--output", out, "--remote", server[1])
    assert proc.returncode == 0, describe(proc)
    assert f"Spark Connect {server[1]}" in proc.stderr
    assert listing(out) == ["_SUCCESS", "assignments", "model.json", "plots", "report.json"]
    model = json.loads((out / "model.json").read_text())
    ref = sklearn_lloyd(x, x[[0, 1, 2]])
    np.testing.assert_allclose(model["centroids"], ref.cluster_centers_, rtol=RTOL, atol=1e-12)
    assert model["n_iter"] == ref.n_iter_
    assert model["transport"]["name"] == "driver"  # a small fit runs in the client
    labels = pd.read_parquet(out / "assignments").sort_values("id")["cluster"].to_numpy()
    assert np.array_equal(labels, ref.labels_)


def test_assign_job_through_spark_remote_variable(server, tmp_path):
    x = blobs(100, seed=2)
    centroids = np.array([[0.0, 0.0, 0.0], [5.0, 5.0, 0.0], [0.0, 5.0, 5.0]])
    KMeansModel(centroids, ["a", "b", "c"]).save(str(tmp_path / "model.json"))
    src = write_csv(tmp_path / "in.csv", ["a", "b", "c"], x)
    proc = run_remote("jobs/assign.py", "--model", tmp_path / "model.json", "--input", src,
                      "--output", tmp_path / "out", env={"SPARK_REMOTE": server[1]})
    assert proc.returncode == 0, describe(proc)
    out = pd.read_parquet(tmp_path / "out").sort_values(["a", "b", "c"])
    xs = out[["a", "b", "c"]].to_numpy()
    brute = np.argmin(((xs[:, None, :] - centroids[None]) ** 2).sum(axis=2), axis=1)
    assert np.array_equal(out["cluster"].to_numpy(), brute)
    assert (tmp_path / "out" / "_SUCCESS").exists()


def test_large_data_on_connect_stays_on_the_executors(spark):
    """The server's size estimate, read from its explain output, keeps a large input off the
    client without counting its rows; a small one is counted."""
    from pyspark.sql import functions as F

    from kmeans_dist import data as packing_data
    from kmeans_dist.transport.driver import small_enough

    large = spark.range(10_000_000).select(*[F.rand(i).alias(f"f{i}") for i in range(4)])
    verdict = small_enough(packing_data.packing(large, [f"f{i}" for i in range(4)]), 4)
    assert not verdict.small and verdict.rows is None and verdict.packed > 128 << 20
    small = spark.range(1000).select(*[F.rand(i).alias(f"f{i}") for i in range(4)])
    verdict = small_enough(packing_data.packing(small, [f"f{i}" for i in range(4)]), 4)
    assert verdict.small and verdict.rows == 1000 and verdict.packed == 1000 * 40


@pytest.mark.parametrize("name", ["resident", "resident-memory", "resident-files", "files",
                                  "rdd"])
def test_classic_only_transport_is_named(data, name):
    _, df = data
    with pytest.raises(ValueError, match=f"^transport '{re.escape(name)}' needs RDDs, which Spark "
                                         "Connect sessions do not have; use transport='arrow-files'"):
        KMeans(3, transport=name).fit(df, ["a", "b", "c"])


def test_drop_in_estimator_beside_pyspark_ml_on_connect(spark, data, tmp_path):
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.ml.clustering import KMeans as SparkKMeans
    from pyspark.ml.feature import VectorAssembler

    from kmeans_dist.ml import KMeans as DropIn

    x, df = data
    assembler = VectorAssembler(inputCols=["a", "b", "c"], outputCol="features")
    ours = Pipeline(stages=[assembler, DropIn(k=3, seed=1, tol=0.0, maxIter=50)]).fit(df)
    theirs = Pipeline(stages=[assembler, SparkKMeans(k=3, seed=1, tol=0.0, maxIter=50)]).fit(df)
    order = lambda cs: np.array(sorted(map(tuple, cs)))  # noqa: E731 - ids differ by init
    np.testing.assert_allclose(order(ours.stages[-1].clusterCenters()),
                               order(theirs.stages[-1].clusterCenters()), rtol=1e-6)
    # the server's model cache holds pyspark.ml's model; once it is cleared, our summary (a
    # Python object, no server-side model behind it) still answers
    assert spark.client._get_ml_cache_info()
    spark.client._cleanup_ml_cache()
    assert spark.client._get_ml_cache_info() == []
    summary = ours.stages[-1].summary
    centres = np.array(ours.stages[-1].clusterCenters())
    nearest = np.argmin(((x[:, None, :] - centres[None]) ** 2).sum(axis=2), axis=1)
    assert summary.k == 3 and summary.clusterSizes == np.bincount(nearest).tolist()
    assert summary.trainingCost == pytest.approx(((x - centres[nearest]) ** 2).sum(), rel=1e-9)
    assert summary.cluster.count() == len(x)
    predicted = ours.transform(df).orderBy("id").toPandas()["prediction"].to_numpy()
    assert np.array_equal(predicted, nearest)
    ours.write().overwrite().save(str(tmp_path / "pipeline"))
    again = PipelineModel.load(str(tmp_path / "pipeline"))
    reloaded = again.transform(df).orderBy("id").toPandas()["prediction"].to_numpy()
    assert np.array_equal(reloaded, predicted)


def test_segment_job_remote_keeps_ids_and_counts_transitions(spark, server, tmp_path):
    """A nightly segment run over Spark Connect after yesterday's (fitted and labelled here
    through the API on Connect): day 2, whose rows come in another order, keeps day 1's id for
    every generating centre; the transitions match numpy's count."""
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    which1 = np.repeat(np.arange(4), 150)
    which2 = np.where(np.arange(600) % 30 == 0, (which1 + 1) % 4, which1)  # 20 switch centre
    days = {}
    for day, which in ((1, which1), (2, which2)):
        x = centres[which] + np.random.default_rng(day).normal(size=(600, 2))
        order = np.random.default_rng(10 + day).permutation(600)
        days[day] = write_csv(tmp_path / f"day{day}.csv", ["customer", "x", "y"],
                              [[str(i), *x[i]] for i in order])
    day1 = spark.read.csv(str(days[1]), header=True, inferSchema=True)
    model = KMeans(4, seed=3).fit(day1, ["x", "y"])
    model.save(str(tmp_path / "day1" / "model.json"))
    model.transform(day1).write.parquet(str(tmp_path / "day1" / "assignments"))
    out = tmp_path / "day2"
    proc = run_remote("jobs/segment.py", "--input", days[2], "--output", out, "--id-col",
                      "customer", "--previous-model", tmp_path / "day1" / "model.json",
                      "--previous-assignments", tmp_path / "day1" / "assignments",
                      "--remote", server[1])
    assert proc.returncode == 0, describe(proc)
    ids = [pd.read_parquet(d / "assignments").sort_values("customer")["cluster"].to_numpy()
           for d in (tmp_path / "day1", out)]
    by_centre = [{g: set(day_ids[which == g]) for g in range(4)}
                 for day_ids, which in zip(ids, (which1, which2))]
    assert all(len(s) == 1 for day in by_centre for s in day.values())
    assert by_centre[0] == by_centre[1]
    drift = json.loads((out / "drift.json").read_text())
    assert drift["transitions"]["changed"] == int(np.sum(ids[0] != ids[1])) == 20


def test_elbow_job_with_remote_flag(server, tmp_path):
    """jobs/elbow.py --remote on three separated blobs: k=3 suggested; k=1's inertia is the total
    sum of squares, k=3's inertia and silhouette (the sample holds every row) scikit-learn's for
    its best of 10 starts."""
    rng = np.random.default_rng(4)
    centres = np.array([[0.0, 0.0], [9.0, 0.0], [0.0, 9.0]])
    x = centres[rng.integers(0, 3, 300)] + rng.normal(size=(300, 2))
    src = write_csv(tmp_path / "in.csv", ["a", "b"], x)
    out = tmp_path / "elbow"
    proc = run_remote("jobs/elbow.py", "--input", src, "--k-min", "1", "--k-max", "4",
                      "--seed", "2", "--output", out, "--remote", server[1])
    assert proc.returncode == 0, describe(proc)
    assert listing(out) == ["_SUCCESS", "elbow.json", "elbow.png"]
    result = json.loads((out / "elbow.json").read_text())
    assert result["suggested_k"] == 3 and [e["k"] for e in result["entries"]] == [1, 2, 3, 4]
    one, three = result["entries"][0], result["entries"][2]
    assert one["inertia"] == pytest.approx(((x - x.mean(axis=0)) ** 2).sum(), rel=1e-9)
    assert one["silhouette"] is None
    ref = SKKMeans(3, n_init=10, random_state=0).fit(x)
    assert three["inertia"] == pytest.approx(ref.inertia_, rel=1e-9)
    assert three["silhouette"] == pytest.approx(silhouette_score(x, ref.labels_), rel=1e-9)
