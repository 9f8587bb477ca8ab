"""The Spark Connect rows of the benchmark: the two child processes of one workload.

A Spark Connect client and a classic session cannot share a Python process, so each workload runs
twice, one process after the other, on the same rows (same seeds, same partition count) and the
same C0:

- ``classic_side``: a classic local[2] session; ours from C0 on the resident transport (the
  classic default) and on the two DataFrame transports Spark Connect can use (arrow-files, its
  default, and arrow), and an empty job.
- ``connect_side``: a local[2] Spark Connect server started in this process, as
  ``SparkSession.builder.remote("local[2]")`` starts one, and a client session of it (the only
  session used); ours from C0 (arrow-files, the default, and arrow), pyspark.ml's KMeans per
  iteration by differencing, and an empty job.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from typing import Any, Callable, Iterator

from pyspark.sql import SparkSession

import measure
import probes
from kmeans_dist.config import DEFAULTS, LOCAL_DEFAULTS
from workloads import Workload


#: what pyspark's ``builder.remote("local[...]")`` adds to the server's settings
SERVER_CONF = {"spark.plugins": "org.apache.spark.sql.connect.SparkConnectPlugin",
               "spark.sql.artifact.isolation.enabled": "true",
               "spark.sql.artifact.isolation.alwaysApplyClassloader": "true",
               "spark.connect.grpc.binding.address": "127.0.0.1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def remote_session() -> Iterator[tuple[SparkSession, float]]:
    """A client session of a local[2] Spark Connect server started here with the classic bench
    session's settings, and the seconds both took to start.

    What ``SparkSession.builder.remote("local[2]")`` does, except for the port: that client
    always dials localhost:15002, which another Spark Connect server may hold on a shared
    machine, so the server listens on a free port here. Its host session is never used."""
    from pyspark import SparkConf, SparkContext
    from pyspark.sql.connect.session import SparkSession as ConnectSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    port = free_port()
    conf = {**DEFAULTS, **LOCAL_DEFAULTS, **measure.SESSION_CONF, **SERVER_CONF,
            "spark.master": "local[2]", "spark.app.name": "kmeans-dist bench (Spark Connect)",
            "spark.connect.grpc.binding.port": str(port)}
    t0 = time.perf_counter()
    host = SparkSession(SparkContext(conf=SparkConf().setAll(list(conf.items()))))
    try:
        os.environ["SPARK_CONNECT_MODE_ENABLED"] = "1"  # functions build Connect expressions
        spark = ConnectSession.builder.remote(f"sc://127.0.0.1:{port}").getOrCreate()
        try:
            yield spark, time.perf_counter() - t0
        finally:
            spark.stop()
    finally:
        host.stop()


def classic_side(w: Workload, iters: int) -> dict:
    """Ours from C0 on the resident and on the arrow transport, in a classic session."""
    spark = measure.session()
    try:
        return {**_side(spark, w, iters, _classic_fits), "jvm": probes.jvm_env(spark)}
    finally:
        spark.stop()


def connect_side(w: Workload, iters: int) -> dict:
    """Ours from C0 and pyspark.ml (differenced), on a local Spark Connect server."""
    with remote_session() as (spark, start_seconds):
        measure.say(w, f"Spark Connect server and client session up in {start_seconds:.1f}s")
        return {**_side(spark, w, iters, _connect_fits), "server_start_seconds": start_seconds}


#: one side's fits: (session, workload, cached data, features, C0, iterations) -> results
Fits = Callable[[SparkSession, Workload, Any, list, Any, int], dict]

SIDES = {"classic": classic_side, "connect": connect_side}

#: the transports Spark Connect can run (the default first), also timed on classic Spark
DATAFRAME_TRANSPORTS = ("arrow-files", "arrow")


def _side(spark: SparkSession, w: Workload, iters: int, fits: Fits) -> dict:
    """The data and C0, the side's fits, then the empty job."""
    df, features, info, c0 = measure.prepared(spark, w)
    result = {"key": w.key, "spark": spark.version, "iters": iters, "data": info,
              **fits(spark, w, df, features, c0, iters)}
    result["empty_job"] = measure.empty_job(spark, info["partitions"])
    measure.say(w, measure.line("empty mapInArrow job", result["empty_job"], "s_job", "s"))
    return result


def _classic_fits(spark: SparkSession, w: Workload, df, features: list, c0, iters: int) -> dict:
    sc = spark.sparkContext
    resident, c_resident = measure.ours_from(sc, df, features, c0, iters, "resident")
    measure.say(w, measure.line("ours from C0, classic, resident", resident, "s_iter", "s/iter"))
    result = {"resident": resident}
    for name in DATAFRAME_TRANSPORTS:
        fit, c = measure.ours_from(sc, df, features, c0, iters, name)
        fit["max_rel_diff_to_resident"] = measure.rel_diff(c, c_resident)
        measure.say(w, measure.line(f"ours from C0, classic, {name}", fit, "s_iter", "s/iter"))
        result[name] = fit
    return result


def _connect_fits(spark: SparkSession, w: Workload, df, features: list, c0, iters: int) -> dict:
    ours, _ = measure.ours_from(None, df, features, c0, iters)
    measure.say(w, measure.line(f"ours from C0, Connect, {ours['transport']}", ours, "s_iter",
                                "s/iter"))
    arrow, _ = measure.ours_from(None, df, features, c0, iters, "arrow")
    measure.say(w, measure.line("ours from C0, Connect, arrow", arrow, "s_iter", "s/iter"))
    ml = measure.ml_differenced(None, df, features, w.k, iters)
    measure.say(w, measure.line("pyspark.ml on Connect, differenced", ml, "s_iter", "s/iter")
                + f" ({ml['n_iter']} iterations in the N-iteration fit)")
    return {"ours": ours, "arrow": arrow, "ml": ml}
