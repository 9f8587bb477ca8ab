"""One workload, measured in one Spark session on one cached data set: every system's timings.

Order inside a workload: data, ours from C0, the read floors, MLlib from C0, then (main workloads)
pyspark.ml's default fit, ours' default fit with as many iterations, and scikit-learn (which
collects the data to the driver, so it comes last).

The data, C0, ours from C0, pyspark.ml's differenced fit and the empty job also run on a Spark
Connect client session (bench/connect.py): there ``spark_context`` is None and the probes record
the Python side only.
"""

from __future__ import annotations

import hashlib
import statistics
import sys
import time
from typing import Any, Callable, Iterable

import numpy as np
from pyspark import cloudpickle
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

import probes
from kmeans_dist import KMeans, data, get_session, tasks
from kmeans_dist.blocks import Block
from kmeans_dist.config import default_parallelism, is_connect
from kmeans_dist import transport as transports
from workloads import Workload

# the task functions below run on the executors, where this module is not importable
cloudpickle.register_pickle_by_value(sys.modules[__name__])

#: the seed of both whole default fits
DEFAULT_FIT_SEED = 42
#: centroids "agree" when the largest difference is at most this times the largest |centroid|
AGREE_RTOL = 1e-6


def say(w: Workload, message: str) -> None:
    print(f"[{w.key}] {message}", flush=True)


# --------------------------------------------------------------------------- tasks (executors)
def touch(blocks: Iterable[Block], _: Any) -> float:
    """The read floor's task: read every byte of every block (x and its squared norms) by summing
    them; no distance math."""
    return sum(float(b.x.sum()) + float(b.x_sq.sum()) for b in blocks)


def lloyd_math(blocks: Iterable[Block], step: tasks.LloydStep) -> float:
    """The arithmetic floor's task: the fit's own Lloyd kernel over the partition's blocks, timed
    inside the task (no transport, no driver)."""
    blocks = list(blocks)
    t0 = time.perf_counter()
    tasks.lloyd(blocks, step)
    return time.perf_counter() - t0


def block_bytes(blocks: Iterable[Block], _: Any) -> tuple[int, int]:
    """(bytes of the blocks' arrays, rows) of one partition."""
    blocks = list(blocks)
    size = sum(b.x.nbytes + b.x_sq.nbytes + (0 if b.w is None else b.w.nbytes) for b in blocks)
    return size, sum(b.rows for b in blocks)


def block_x(b: Block) -> np.ndarray:
    """A block's rows as one array (scikit-learn's input; flatMap over it gives MLlib's rows)."""
    return b.x


def no_op(batches: Iterable) -> Iterable:
    """The empty job's mapInArrow task: reads its (empty) input, returns one row."""
    import pyarrow as pa

    for _ in batches:
        pass
    yield pa.RecordBatch.from_pydict({"p": pa.array([0], pa.int32())})


# --------------------------------------------------------------------------- data
#: settings of every bench session, classic or the local Spark Connect server
SESSION_CONF = {"spark.driver.memory": "8g"}


def session() -> SparkSession:
    return get_session("local[2]", conf=SESSION_CONF)


def spark_context(spark: SparkSession):
    """The SparkContext the probes read, or None on Spark Connect (which has none)."""
    return None if is_connect(spark) else spark.sparkContext


def blobs(spark: SparkSession, n: int, d: int, k: int, parts: int, seed: int = 0) -> DataFrame:
    """n float64 rows around k centres in [-10, 10]^d with noise std 4 (the blobs overlap, so
    Lloyd keeps moving rows for many iterations), generated inside Spark as
    bench/quick_iteration.py does."""
    centres = np.random.default_rng(seed).uniform(-10, 10, size=(k, d))
    cid = (F.col("id") % k).cast("int")
    cols = [
        (F.element_at(F.array(*[F.lit(float(c)) for c in centres[:, j]]), cid + 1)
         + 4.0 * F.randn(seed + j)).alias(f"x{j}")
        for j in range(d)
    ]
    return spark.range(0, n, numPartitions=parts).select(*cols)


def cached_data(spark: SparkSession, w: Workload) -> tuple[DataFrame, list[str], dict]:
    """The workload's data, cached and counted (not part of any timing); the same rows on a
    classic and a Spark Connect session (same seeds, same partitions)."""
    sc = spark_context(spark)
    before = probes.storage(sc)
    t0 = time.perf_counter()
    parts = default_parallelism(spark)
    df = blobs(spark, w.n, w.d, w.k, parts).cache()
    rows = df.count()
    info = {"rows": rows, "partitions": parts, "seconds": time.perf_counter() - t0,
            "cache": probes.new_storage(sc, before)}
    return df, list(df.columns), info


def initial_centroids(df: DataFrame, k: int, n: int) -> np.ndarray:
    """C0: k rows of the data (a seeded sample), the shared start of ours, MLlib and sklearn."""
    rows = df.sample(fraction=min(1.0, 20.0 * k / n), seed=1).limit(k).collect()
    c0 = np.array(rows, dtype=np.float64)
    if c0.shape[0] != k:
        raise RuntimeError(f"sampled {c0.shape[0]} initial centroids, expected {k}")
    return c0


def fingerprint(a: np.ndarray) -> str:
    """A short digest of an array's bytes (shows two sessions started from the same C0)."""
    return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()[:12]


def prepared(spark: SparkSession, w: Workload) -> tuple[DataFrame, list[str], dict, np.ndarray]:
    """The cached data, its features, its info (with C0's fingerprint) and C0."""
    df, features, info = cached_data(spark, w)
    say(w, f"{info['rows']} rows x {w.d} cached in {info['seconds']:.1f}s")
    c0 = initial_centroids(df, w.k, w.n)
    info["c0_fingerprint"] = fingerprint(c0)
    return df, features, info, c0


def packing(df: DataFrame, features: list[str]) -> data.Packing:
    """The library's validated float64 rows of ``df`` and their packer (what a fit iterates
    over)."""
    return data.packing(df, features, weight_col=None, block_rows=None, cosine=False,
                            num_partitions=default_parallelism(df.sparkSession))


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference relative to the largest absolute value of ``b``."""
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), np.finfo(float).tiny))


# --------------------------------------------------------------------------- systems
def ours_from(sc, df: DataFrame, features: list[str], c0: np.ndarray, iters: int,
              transport: str = "auto") -> tuple[dict, np.ndarray]:
    """Ours from C0 (tol=0) on ``transport``: median seconds of the iterations after the first."""
    estimator = KMeans(len(c0), init=c0, max_iter=iters, tol=0.0, transport=transport)
    with probes.Phase(sc) as phase:
        model = estimator.fit(df, features)
    secs = [h["seconds"] for h in model.history]
    result = {"s_iter": statistics.median(secs[1:] or secs), "iter_seconds": secs,
              # what ran (a fallback would show), and where resident tasks held the blocks
              "transport": model.transport["name"],
              "storage": model.transport.get("storage"), "transport_record": model.transport,
              "n_iter": model.n_iter, "stop": model.stop, "inertia": model.inertia,
              "fit_seconds": phase.seconds, "memory": phase.memory}
    return result, model.centroids


def read_floor(sc, packed: data.Packing, d: int, passes: int, transport_name: str,
               c0: np.ndarray) -> dict:
    """Seconds of a pass that only reads every cached block, on one of the library's transports:
    the first ``run`` builds and caches the blocks, the next ``passes`` runs are timed. Also the
    arithmetic floor: the slowest task's seconds in the Lloyd kernel from C0 (what an iteration
    costs with no transport at all), median of ``passes`` after a warm-up."""
    before = probes.storage(sc)
    transport = transports.make(transport_name, packed, d)
    try:
        t0 = time.perf_counter()
        transport.run(touch, None)  # computes the blocks and writes their files
        cache_seconds = time.perf_counter() - t0
        secs = timed_runs(lambda: transport.run(touch, None), passes)
        math = [max(transport.run(lloyd_math, tasks.LloydStep("math-floor", i + 1, c0,
                                                                  None if i == 0 else c0)))
                for i in range(passes + 1)][1:]
        sizes = transport.run(block_bytes, None)
        handles = probes.new_storage(sc, before)
    finally:
        transport.release()
    return {"transport": transport_name, "s_pass": statistics.median(secs), "pass_seconds": secs,
            "math_s": statistics.median(math), "math_seconds": math,
            "cache_seconds": cache_seconds, "block_bytes": sum(s for s, _ in sizes),
            "rows": sum(r for _, r in sizes), "spark_cache": handles}


def timed_runs(run: Callable[[], Any], repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``run``."""
    secs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        secs.append(time.perf_counter() - t0)
    return secs


def empty_job(spark: SparkSession, parts: int, repeats: int = 5) -> dict:
    """Seconds of a job that does nothing: one mapInArrow task per partition over ``parts``
    rows, collected (the fixed cost an iteration on the arrow transport pays on top of its
    work); median of ``repeats`` after a warm-up run."""
    job = spark.range(0, parts, numPartitions=parts).mapInArrow(no_op, "p int")
    job.collect()
    secs = timed_runs(job.collect, repeats)
    return {"s_job": statistics.median(secs), "job_seconds": secs, "partitions": parts}


Timed = tuple[float, Any]  # (seconds, what the fit returned)


def warm_then_time(fit: Callable[[int], Timed], iters: int) -> tuple[Timed, Timed]:
    """A 1-iteration warm-up, then the 1-iteration and the ``iters``-iteration fits."""
    fit(1)
    return fit(1), fit(iters)


def differenced(t1: float, tn: float, iters: int) -> float | None:
    """Seconds per iteration net of a fit's fixed costs: (T(N) - T(1)) / (N - 1)."""
    return (tn - t1) / (iters - 1) if iters > 1 else None


def mllib_from(sc, frame: DataFrame, d: int, c0: np.ndarray, iters: int,
               ours_centroids: np.ndarray, log: probes.SparkLog) -> dict:
    """MLlib from C0 (epsilon=0): (T(iters) - T(1)) / (iters - 1) after a 1-iteration warm-up,
    which cancels each call's cost of moving the rows from Python into the JVM; and whether it
    ends at our centroids."""
    from pyspark.mllib.clustering import KMeans as MLlibKMeans, KMeansModel as MLlibModel

    before = probes.storage(sc)
    t0 = time.perf_counter()
    vecs = data.block_rdd(frame, d).flatMap(block_x).cache()
    vecs.count()
    prep_seconds = time.perf_counter() - t0
    cache = probes.new_storage(sc, before)

    def train(n_iter: int) -> Timed:
        log.take()
        with probes.Phase(sc) as phase:
            model = MLlibKMeans.train(vecs, len(c0), maxIterations=n_iter,
                                      initialModel=MLlibModel(list(c0)), epsilon=0.0)
        logged = probes.spark_kmeans_times(log.take())["iterations"]
        return phase.seconds, (model, phase, logged)

    try:
        (t1, (_, _, log1)), (tn, (model, phase, logn)) = warm_then_time(train, iters)
    finally:
        vecs.unpersist()
    diff = rel_diff(ours_centroids, np.array(model.clusterCenters, dtype=np.float64))
    logged = None if log1 is None or logn is None else differenced(log1, logn, iters)
    return {"s_iter": differenced(t1, tn, iters), "t1": t1, "tn": tn, "iters": iters,
            "log_s_iter": logged, "log_t1": log1, "log_tn": logn,
            "max_rel_diff": diff, "agree": diff <= AGREE_RTOL,
            "prep_seconds": prep_seconds, "cache": cache, "memory": phase.memory}


def assembled(sc, df: DataFrame, features: list[str]) -> tuple[DataFrame, dict]:
    """pyspark.ml's input: the VectorAssembler output of ``df``, cached and counted; and
    {"prep_seconds", "cache"}."""
    from pyspark.ml.feature import VectorAssembler

    before = probes.storage(sc)
    t0 = time.perf_counter()
    frame = (VectorAssembler(inputCols=features, outputCol="features")
             .transform(df).select("features").cache())
    frame.count()
    return frame, {"prep_seconds": time.perf_counter() - t0,
                   "cache": probes.new_storage(sc, before)}


def ml_differenced(sc, df: DataFrame, features: list[str], k: int, iters: int) -> dict:
    """pyspark.ml's KMeans per iteration, which cannot start from C0 (no initial model in its
    Python API): random init (cheap), tol=0, same seed; after a 1-iteration warm-up,
    (T(N) - T(1)) / (numIter - 1), numIter read from the N-iteration fit's summary."""
    from pyspark.ml.clustering import KMeans as MLKMeans

    frame, prep = assembled(sc, df, features)

    def fit(n_iter: int) -> Timed:
        est = MLKMeans(k=k, seed=DEFAULT_FIT_SEED, initMode="random", tol=0.0, maxIter=n_iter,
                       featuresCol="features")
        t0 = time.perf_counter()
        model = est.fit(frame)
        return time.perf_counter() - t0, model.summary

    try:
        (t1, one), (tn, summary) = warm_then_time(fit, iters)
    finally:
        frame.unpersist()
    n_iter = int(summary.numIter)
    return {"s_iter": differenced(t1, tn, n_iter), "t1": t1, "tn": tn, "iters": iters,
            "n_iter": n_iter, "n_iter_1": int(one.numIter), "converged_early": n_iter < iters,
            "training_cost": float(summary.trainingCost), **prep}


def ml_default_fit(sc, df: DataFrame, features: list[str], k: int, log: probes.SparkLog) -> dict:
    """pyspark.ml's KMeans with its defaults on the cached VectorAssembler output."""
    from pyspark.ml.clustering import KMeans as MLKMeans

    assembled_df, prep = assembled(sc, df, features)
    try:
        log.take()
        with probes.Phase(sc) as phase:
            model = MLKMeans(k=k, seed=DEFAULT_FIT_SEED, featuresCol="features").fit(assembled_df)
        logged = probes.spark_kmeans_times(log.take())
        summary = model.summary
        result = {"fit_seconds": phase.seconds, "init_seconds": logged["init"],
                  "iterations_seconds": logged["iterations"], "n_iter": summary.numIter,
                  "training_cost": summary.trainingCost, **prep, "memory": phase.memory}
    finally:
        assembled_df.unpersist()
    return result


def ours_default_fit(sc, df: DataFrame, features: list[str], k: int, max_iter: int,
                     log: probes.PyLog) -> dict:
    """Ours with its default init (k-means||), as many Lloyd iterations as pyspark.ml did."""
    log.take()
    with probes.Phase(sc) as phase:
        model = KMeans(k, seed=DEFAULT_FIT_SEED, max_iter=max_iter).fit(df, features)
    return {"fit_seconds": phase.seconds, "init_seconds": probes.ours_init_seconds(log.take()),
            "iterations_seconds": sum(h["seconds"] for h in model.history),
            "n_iter": model.n_iter, "stop": model.stop, "inertia": model.inertia,
            "last_assignment_cost": model.history[-1]["inertia"], "memory": phase.memory}


def sklearn_from(sc, frame: DataFrame, d: int, c0: np.ndarray, iters: int,
                 ours: dict, ours_centroids: np.ndarray) -> dict:
    """scikit-learn's Lloyd from C0 on the data collected to the driver: fit seconds / n_iter_
    (after a 1-iteration warm-up), and the differenced figure as for MLlib."""
    from sklearn.cluster import KMeans as SkKMeans

    def fit(n_iter: int) -> Timed:
        est = SkKMeans(n_clusters=len(c0), init=c0, n_init=1, max_iter=n_iter, tol=0.0,
                       algorithm="lloyd")
        t0 = time.perf_counter()
        est.fit(x)
        return time.perf_counter() - t0, est

    with probes.Phase(sc) as phase:
        x = np.concatenate(data.block_rdd(frame, d).map(block_x).collect())
        (t1, _), (tn, est) = warm_then_time(fit, iters)
    same = est.n_iter_ == ours["n_iter"]
    return {"s_iter": tn / est.n_iter_, "diff_s_iter": differenced(t1, tn, int(est.n_iter_)),
            "t1": t1, "tn": tn, "n_iter": int(est.n_iter_), "rows": int(x.shape[0]),
            "inertia": float(est.inertia_),
            "max_rel_diff_to_ours": rel_diff(est.cluster_centers_, ours_centroids) if same else None,
            "memory": phase.memory}


# --------------------------------------------------------------------------- one workload
def run_workload(w: Workload, iters: int) -> dict:
    """Every measurement of one workload, in a fresh local[2] session stopped at the end."""
    spark = session()
    try:
        sc = spark.sparkContext
        spark_log, py_log = probes.SparkLog(sc), probes.PyLog()
        df, features, info, c0 = prepared(spark, w)
        result: dict[str, Any] = {"key": w.key, "n": w.n, "d": w.d, "k": w.k, "full": w.full,
                                  "iters": iters, "data": info}
        result["ours"], ours_c = ours_from(sc, df, features, c0, iters)
        say(w, line("ours from C0", result["ours"], "s_iter", "s/iter"))
        packed = packing(df, features)
        frame = packed.frame
        result.update(_floors(sc, w, packed, iters, result["ours"]["transport"], c0))
        result["mllib"] = mllib_from(sc, frame, w.d, c0, result["ours"]["n_iter"], ours_c, spark_log)
        say(w, line("MLlib from C0", result["mllib"], "s_iter", "s/iter")
            + f", centroids max rel diff {result['mllib']['max_rel_diff']:.1e}")
        if w.full:
            result.update(_default_fits(sc, w, df, features, spark_log, py_log))
            result["sklearn"] = sklearn_from(sc, frame, w.d, c0, iters, result["ours"], ours_c)
            say(w, line("scikit-learn from C0", result["sklearn"], "s_iter", "s/iter"))
        result["jvm"] = probes.jvm_env(spark)
        return result
    finally:
        spark.stop()


def _floors(sc, w: Workload, packed: data.Packing, passes: int, ours_transport: str,
            c0: np.ndarray) -> dict:
    """The read floor on ours' transport ("floor") and on the files transport ("floor_files", the
    issue's definition; the same run when ours uses files)."""
    floors = {name: read_floor(sc, packed, w.d, passes, name, c0)
              for name in dict.fromkeys([ours_transport, "files"])}
    for name, floor in floors.items():
        say(w, line(f"read floor ({name})", floor, "s_pass", "s/pass"))
        say(w, line(f"arithmetic floor ({name})", floor, "math_s", "s/pass"))
    return {"floor": floors[ours_transport], "floor_files": floors["files"]}


def _default_fits(sc, w: Workload, df: DataFrame, features: list[str],
                  spark_log: probes.SparkLog, py_log: probes.PyLog) -> dict:
    ml = ml_default_fit(sc, df, features, w.k, spark_log)
    say(w, f"pyspark.ml default fit: {ml['fit_seconds']:.1f}s, {ml['n_iter']} iterations")
    ours = ours_default_fit(sc, df, features, w.k, ml["n_iter"], py_log)
    say(w, f"ours default fit: {ours['fit_seconds']:.1f}s, {ours['n_iter']} iterations")
    return {"ml": ml, "ours_default": ours}


def line(label: str, result: dict, key: str, unit: str) -> str:
    """The progress line "label: value unit" (n/a where the value is missing)."""
    value = result.get(key)
    return f"{label}: " + ("n/a" if value is None else f"{value:.4f} {unit}")
