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


#: keys a conf file may hold
CONF_KEYS = {"master": str, "spark": dict}


def load_conf(path: str) -> dict:
    """A conf/*.yaml profile: ``master`` (str) and ``spark`` (spark.* key -> scalar), checked."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh)
    except FileNotFoundError:
        raise FileNotFoundError(f"conf file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"conf file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ValueError(f"conf file {path} must be a mapping of {sorted(CONF_KEYS)}")
    for key, value in raw.items():
        if key not in CONF_KEYS:
            raise ValueError(f"conf file {path}: unknown key '{key}' (allowed: {sorted(CONF_KEYS)})")
        if not isinstance(value, CONF_KEYS[key]):
            raise ValueError(f"conf file {path}: '{key}' must be a {CONF_KEYS[key].__name__}")
    spark = raw.get("spark", {})
    for key, value in spark.items():
        if not (isinstance(key, str) and key.startswith("spark.")):
            raise ValueError(f"conf file {path}: spark setting '{key}' must start with 'spark.'")
        if not isinstance(value, (str, int, float, bool)):
            raise ValueError(f"conf file {path}: spark setting '{key}' must be a single value")
    return {
        "master": raw.get("master"),
        "spark": {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in spark.items()},
    }


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
