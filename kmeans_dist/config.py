"""The SparkSession a job or test runs in: same Python on driver and workers, one BLAS thread."""

from __future__ import annotations

import os
import sys

from pyspark import SparkConf
from pyspark.sql import SparkSession

#: settings every session gets unless the user set them (spark-submit --conf always wins)
DEFAULTS = {
    "spark.sql.shuffle.partitions": "8",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.executorEnv.OMP_NUM_THREADS": "1",
    "spark.executorEnv.OPENBLAS_NUM_THREADS": "1",
    "spark.executorEnv.MKL_NUM_THREADS": "1",
    "spark.python.worker.reuse": "true",
    "spark.ui.showConsoleProgress": "false",
}

LOCAL_DEFAULTS = {"spark.ui.enabled": "false", "spark.driver.memory": "4g"}


def under_spark_submit() -> bool:
    """True when spark-submit started this Python (its JVM already exists)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def get_session(master: str | None = None, app_name: str = "kmeans-dist",
                conf: dict[str, str] | None = None) -> SparkSession:
    """The active SparkSession, or a new one: ``master`` or spark-submit's, else ``local[*]``."""
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    settings = dict(DEFAULTS)
    if not under_spark_submit():
        builder = builder.master(master or "local[*]")
        settings.update(LOCAL_DEFAULTS)
    elif master:
        builder = builder.master(master)
    settings.update(conf or {})
    existing = SparkConf()  # spark-submit's --conf and spark-defaults.conf: never overridden
    for key, value in settings.items():
        if not existing.contains(key):
            builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
