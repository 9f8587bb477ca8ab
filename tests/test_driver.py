"""The driver transport: small data fitted in the driver process, bit-identical to the
distributed transports; ``transport="auto"`` takes it only under the driver limit."""

import json
import logging
import os
import re
import sys
import time

import numpy as np
import pytest
from pyspark import cloudpickle
from sklearn.cluster import KMeans as SkKMeans

from jobutil import scala_list
from kmeans_dist import KMeans, data, kernels, tasks
from kmeans_dist.transport import RDDTransport, choose
from kmeans_dist.transport.driver import (DEFAULT_LIMIT, DRIVER_SHARE, DriverTransport,
                                          driver_limit, small_enough)
from kmeans_dist.transport.budget import MIB, available_memory


@pytest.fixture(scope="module")
def blobs(spark):
    """300 weighted rows in three overlapping blobs over 3 partitions, the middle one empty."""
    rng = np.random.default_rng(11)
    x = np.concatenate([rng.normal(c, 1.5, size=(100, 4)) for c in (0.0, 3.0, 6.0)])
    w = rng.uniform(0.5, 2.0, size=len(x))
    rows = [tuple(map(float, r)) + (float(wi),) for r, wi in zip(x, w)]
    half = len(rows) // 2
    rdd = spark.sparkContext.parallelize([rows[:half], [], rows[half:]], 3).flatMap(lambda p: p)
    return rdd.toDF(["a", "b", "c", "e", "w"]), x, w


FEATURES = ["a", "b", "c", "e"]
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # _blocks_seen runs in tasks


def _blocks_seen(blocks, _):
    """Each block's place and content, as a task sees them."""
    return [(b.part, b.start, b.rows, b.x.tobytes(), b.x_sq.tobytes(), b.w.tobytes())
            for b in blocks]


def test_driver_blocks_are_the_tasks_blocks(spark, blobs):
    """The driver packs every partition into exactly the blocks a Spark task packs (same
    partition, offset, rows, bytes), an empty partition included, in partition order."""
    df, _, _ = blobs
    packing = data.packing(df, FEATURES, weight_col="w", block_rows=64, num_partitions=3)
    rdd = RDDTransport(data.block_rdd(packing.frame, 4))
    driver = DriverTransport(packing, 4, threads=2)
    try:
        expected = rdd.run(_blocks_seen, None)
        got = driver.run(_blocks_seen, None)
    finally:
        rdd.release()
        driver.release()
    assert [len(p) for p in expected] == [3, 0, 3]  # 150 rows = 64 + 64 + 22, twice
    assert got == expected
    assert driver.num_partitions == 3


def test_capped_collect_keeps_partition_order(spark):
    """Rows Spark estimates but cannot count from the plan (a generator over a range, 3
    partitions): the capped collect gathers them through a shuffle, and the driver still packs
    exactly the tasks' blocks, in partition order."""
    from pyspark.sql import functions as F

    df = spark.range(0, 900, numPartitions=3).select(
        F.explode(F.array(F.col("id") * 1.0, F.col("id") + 0.5)).alias("a"))
    packing = data.packing(df, ["a"], block_rows=128, num_partitions=3)
    verdict = small_enough(packing, 1)
    assert verdict.small and verdict.rows == 1800 and not verdict.estimated
    rdd = RDDTransport(data.block_rdd(packing.frame, 1))
    driver = DriverTransport(packing, 1, verdict=verdict)
    try:
        expected = rdd.run(_blocks_seen_unweighted, None)
        assert driver.run(_blocks_seen_unweighted, None) == expected
    finally:
        rdd.release()
        driver.release()
    assert [len(p) for p in expected] == [5, 5, 5]  # 600 rows each: 4 x 128 + 88


def _blocks_seen_unweighted(blocks, _):
    return [(b.part, b.start, b.rows, b.x.tobytes()) for b in blocks]


def test_driver_fit_is_the_distributed_fit(spark, blobs):
    """fit_many over two ks with n_init=2, for every init: each model's centroids, inertia,
    iterations, per-iteration moves and restarts equal the resident transport's (whose passes
    are not Spark jobs, so the comparison is cheap), bit for bit."""
    df, _, _ = blobs
    for init in ("k-means||", "k-means++", "random"):
        common = dict(init=init, seed=5, n_init=2, weight_col="w", block_rows=64,
                      num_partitions=2, tol=1e-4)
        ref = KMeans(2, transport="resident", **common).fit_many(df, [2, 4], FEATURES)
        got = KMeans(2, transport="driver", **common).fit_many(df, [2, 4], FEATURES)
        for k in (2, 4):
            assert ref[k].transport["name"] == "resident"  # not a fallback
            assert got[k].transport["name"] == "driver"
            assert np.array_equal(got[k].centroids, ref[k].centroids), (init, k)
            assert got[k].inertia == ref[k].inertia and got[k].n_iter == ref[k].n_iter
            assert [h["moved"] for h in got[k].history] == [h["moved"] for h in ref[k].history]
            assert ([r["inertia"] for r in got[k].restarts]
                    == [r["inertia"] for r in ref[k].restarts])


def test_driver_fit_is_scikit_learns_lloyd(spark, blobs):
    """From the same start: scikit-learn's Lloyd, labels and centres."""
    df, x, w = blobs
    init = x[[0, 1, 2]]
    model = KMeans(3, init=init, weight_col="w", transport="driver").fit(df, FEATURES)
    ref = SkKMeans(3, init=init, n_init=1, algorithm="lloyd", tol=0.0, max_iter=300).fit(
        x, sample_weight=w)
    # rtol 1e-12: both sum the same rows in float64, in different orders
    np.testing.assert_allclose(model.centroids, ref.cluster_centers_, rtol=1e-12, atol=1e-12)
    assert model.n_iter == ref.n_iter_ > 2
    assert model.inertia == pytest.approx(ref.inertia_, rel=1e-12)


def test_checkpoint_resume_and_warm_start_on_the_driver(spark, blobs, tmp_path):
    """A fit stopped after 2 iterations and resumed from its checkpoint on the driver ends where
    the uninterrupted distributed fit does; a warm start from it stops at once."""
    df, x, _ = blobs
    init = x[[0, 1, 2]]
    full = KMeans(3, init=init, transport="rdd").fit(df, FEATURES)
    ckpt = str(tmp_path / "ckpt")
    KMeans(3, init=init, max_iter=2, checkpoint=ckpt, transport="driver").fit(df, FEATURES)
    resumed = KMeans(3, init=init, checkpoint=ckpt, resume=True, transport="driver").fit(
        df, FEATURES)
    assert np.array_equal(resumed.centroids, full.centroids)
    assert resumed.n_iter == full.n_iter > 2
    warm = KMeans(3, init=resumed).fit(df, FEATURES)
    assert warm.transport["name"] == "driver" and warm.n_iter == 1
    assert np.array_equal(warm.centroids, full.centroids)


def test_auto_takes_the_driver_for_small_data_and_says_why(spark, blobs, caplog):
    """auto: the driver for 300 rows, with the rule's figures in the model and the log; the
    labels the driver's Lloyd loop kept are dropped at the end of the fit."""
    df, _, _ = blobs
    tasks.LABELS.forget({k[0] for k in list(tasks.LABELS._entries)})
    with caplog.at_level(logging.INFO, logger="kmeans_dist"):
        model = KMeans(3, seed=1, weight_col="w").fit(df, FEATURES)
    record = model.transport
    assert record["name"] == "driver"
    assert record["rows"] == 300 and record["packed_bytes"] == 300 * (8 * 4 + 8 + 8)
    assert record["held_bytes"] == record["packed_bytes"]
    limit, _ = driver_limit(spark)
    assert record["limit"] == limit
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("transport")]
    assert said and "300 rows" in said[0] and "within the driver limit" in said[0], said
    assert not tasks.LABELS._entries


#: the physical operators through which Spark runs Python (UDFs, pandas/Arrow functions): a plan
#: without any of them runs in the JVM only, and starts no Python worker
PYTHON_OPERATORS = re.compile(r"Python|InPandas|InArrow|FlatMapGroupsIn|FlatMapCoGroupsIn")


def _sql_executions(spark) -> list:
    return scala_list(spark._jsparkSession.sharedState().statusStore().executionsList())


def test_small_data_comes_in_one_jvm_only_collect_and_runs_one_thread_per_core(spark, tmp_path):
    """A small input Spark can estimate (a range): the whole fit is one Spark job, whose plan
    has no Python operator (the collect runs in the JVM only, no Python worker starts); the
    passes then run in the driver on one thread per core this process may use, and model.json
    records the figures the README lists."""
    from pyspark.sql import functions as F

    df = spark.range(0, 3000, numPartitions=2).select(
        F.col("id").cast("double").alias("a"), (F.col("id") * 7 % 13).cast("double").alias("b"))
    jobs = spark.sparkContext._jsc.sc().dagScheduler().numTotalJobs()
    executions = len(_sql_executions(spark))
    model = KMeans(3, seed=1).fit(df, ["a", "b"])
    assert spark.sparkContext._jsc.sc().dagScheduler().numTotalJobs() == jobs + 1
    deadline = time.monotonic() + 30
    while len(new := _sql_executions(spark)[executions:]) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [e.description() for e in new] == ["kmeans_dist: bringing small data to the driver"]
    plan = new[0].physicalPlanDescription()
    assert "Range" in plan and not PYTHON_OPERATORS.search(plan), plan
    # the pattern does see Python where it runs: a mapInArrow, the model's scalar UDF
    for python in (data.packing(df, ["a", "b"]).frame, model.transform(df)):
        assert PYTHON_OPERATORS.search(python._jdf.queryExecution().executedPlan().toString())

    model.save(str(tmp_path / "model.json"))
    record = json.loads((tmp_path / "model.json").read_text())["transport"]
    assert sorted(record) == ["held_bytes", "limit", "limit_source", "name", "packed_bytes",
                              "partitions", "rows", "threads"]
    assert record["name"] == "driver" and record["rows"] == 3000
    assert record["packed_bytes"] == record["held_bytes"] == 3000 * (8 * 2 + 8)
    assert record["threads"] == len(os.sched_getaffinity(0))  # "one thread per core"
    assert re.fullmatch(r"the smaller of 128 MiB and 0\.125 x the driver's [\d,]+ MiB available",
                        record["limit_source"]), record
    assert record["limit"] == driver_limit(spark)[0]


def test_auto_keeps_larger_data_on_the_executors(spark, blobs):
    """Over the limit (here driver_max_mb just below the packed size) auto is resident; 0 turns
    the driver path off without a job."""
    df, _, _ = blobs
    packed_mb = 300 * 48 / MIB
    over = KMeans(3, seed=1, weight_col="w", driver_max_mb=packed_mb * 0.99).fit(df, FEATURES)
    assert over.transport["name"] == "resident"
    exact = KMeans(3, seed=1, weight_col="w", driver_max_mb=packed_mb).fit(df, FEATURES)
    assert exact.transport["name"] == "driver"
    assert np.array_equal(exact.centroids, over.centroids)
    packing = data.packing(df, FEATURES, weight_col="w")
    jobs = set(spark.sparkContext.statusTracker().getJobIdsForGroup())
    name, verdict = choose("auto", False, packing, 4, driver_max_mb=0)
    assert name == "resident" and not verdict.small and verdict.rows is None
    assert set(spark.sparkContext.statusTracker().getJobIdsForGroup()) == jobs  # no job


def test_spark_estimate_over_the_limit_skips_the_collect(spark):
    """A range of 200,000 rows x 4 columns: Spark's own estimate (several MiB) is over a 1 MiB
    limit, so no job runs and the fit stays distributed."""
    from pyspark.sql import functions as F

    df = spark.range(200_000).select(*[F.rand(i).alias(f"f{i}") for i in range(4)])
    packing = data.packing(df, [f"f{i}" for i in range(4)])
    jobs = set(spark.sparkContext.statusTracker().getJobIdsForGroup())
    verdict = small_enough(packing, 4, max_mb=1)
    assert not verdict.small and verdict.rows is None and verdict.packed > MIB
    assert set(spark.sparkContext.statusTracker().getJobIdsForGroup()) == jobs
    # under a limit above the estimate the rows are collected: exact figures, every row
    counted = small_enough(packing, 4, max_mb=64)
    assert counted.small and counted.rows == 200_000 and counted.packed == 200_000 * 40
    assert counted.table.num_rows == 200_000


def test_the_capped_collect_stops_one_row_over_the_limit(spark):
    """A range of 3,000 rows over 3 partitions, which Spark estimates at 8 bytes a row (24,000),
    under a limit worth 2,000 packed rows (32,000 bytes: over the estimate): the collect asks
    for 2,001 and the verdict says over, without a row count; all rows, in partition order,
    under a limit worth them all."""
    from pyspark.sql import functions as F

    df = spark.range(0, 3000, numPartitions=3).select(F.col("id").cast("double").alias("a"))
    packing = data.packing(df, ["a"])
    assert packing.rows.count() == 3000
    over = small_enough(packing, 1, max_mb=2000 * 16 / MIB)
    assert not over.small and over.rows is None and over.packed == 2000 * 16 + 1
    assert over.describe().startswith("more than 31.2 KiB packed, over the driver limit")
    under = small_enough(packing, 1, max_mb=3000 * 16 / MIB)
    assert under.small and under.rows == 3000
    assert under.table.column("f0").to_pylist() == [float(i) for i in range(3000)]


def test_rows_without_an_estimate_are_counted_first(spark, blobs):
    """Rows from an RDD (no estimate): a count decides, with the exact figures either way."""
    df, _, _ = blobs
    packing = data.packing(df, FEATURES, weight_col="w", num_partitions=3)
    over = small_enough(packing, 4, max_mb=150 * 48 / MIB)
    assert not over.small and over.rows == 300 and over.packed == 300 * 48
    exact = small_enough(packing, 4, max_mb=300 * 48 / MIB)
    assert exact.small and exact.rows == 300 and exact.table.num_rows == 300


def test_the_default_limit_rule(spark):
    """The smaller of 128 MiB and 1/8 of the driver's available memory (on these machines the
    former); an explicit value wins; never over half of spark.driver.maxResultSize."""
    limit, source = driver_limit(spark)
    share = DRIVER_SHARE * available_memory()
    assert limit == min(DEFAULT_LIMIT, int(share)) or abs(limit - share) < 64 * MIB
    assert "128 MiB" in source
    assert driver_limit(spark, 3)[0] == 3 * MIB
    assert driver_limit(spark, 0)[0] == 0
    assert driver_limit(spark, 4096)[0] == 512 * MIB  # maxResultSize 1g by default
    with pytest.raises(ValueError, match="driver_max_mb must be a number >= 0"):
        KMeans(2, driver_max_mb=-1)


def test_empty_partitions_add_nothing_to_a_fold(spark, blobs):
    """Why the driver may stop at the last partition with rows: a partition without rows adds
    exact zeros to every fold (Lloyd partials, summaries)."""
    df, x, _ = blobs
    packing = data.packing(df, FEATURES, weight_col="w", num_partitions=3)
    step = tasks.LloydStep("t", 1, x[[0, 1, 2]], None)
    driver = DriverTransport(packing, 4)
    try:
        parts = driver.run(tasks.lloyd, step)
    finally:
        driver.release()
    with_empty = kernels.fold(parts + [tasks.lloyd(iter([]), step)])
    alone = kernels.fold(parts)
    for field in ("sums", "weights", "counts"):
        assert np.array_equal(getattr(with_empty, field), getattr(alone, field))
    assert with_empty.inertia == alone.inertia and with_empty.moved == alone.moved


def test_drop_in_takes_the_driver_path_unasked(spark, blobs, caplog):
    """kmeans_dist.ml.KMeans on an assembled vector column: the engine's log names the driver
    transport, and the centres are the distributed fit's."""
    from pyspark.ml.feature import VectorAssembler

    from kmeans_dist.ml import KMeans as DropIn

    df, _, _ = blobs
    assembled = VectorAssembler(inputCols=FEATURES, outputCol="features").transform(df)
    with caplog.at_level(logging.INFO, logger="kmeans_dist"):
        model = DropIn(k=3, seed=1, weightCol="w").fit(assembled)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("transport ")]
    assert said and said[0].startswith("transport driver: 300 rows"), said
    far = DropIn(k=3, seed=1, weightCol="w", driverMaxMb=0).fit(assembled)
    assert np.array_equal(np.array(model.clusterCenters()), np.array(far.clusterCenters()))
    assert model.summary.trainingCost == far.summary.trainingCost
