"""The SparkSession a job or test runs in: same Python on driver and workers, one BLAS thread."""

from __future__ import annotations

import os
import sys

from pyspark import SparkConf
from pyspark.sql import SparkSession

from kmeans_dist.errors import MissingInput, UserError

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


#: keys a conf file may hold: the master, partitions for the fit (default: the cluster's cores),
#: and spark.* settings
CONF_KEYS = {"master": str, "partitions": int, "spark": dict}


def load_conf(path: str) -> dict:
    """A conf/*.yaml profile: ``master`` (str) and ``spark`` (spark.* key -> scalar), checked."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh)
    except FileNotFoundError:
        raise MissingInput(f"conf file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"conf file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise UserError(f"conf file {path} must be a mapping of {sorted(CONF_KEYS)}")
    for key, value in raw.items():
        if key not in CONF_KEYS:
            raise UserError(f"conf file {path}: unknown key '{key}' (allowed: {sorted(CONF_KEYS)})")
        if not isinstance(value, CONF_KEYS[key]) or isinstance(value, bool):
            raise UserError(f"conf file {path}: '{key}' must be a {CONF_KEYS[key].__name__}, "
                            f"got {value!r}")
    if raw.get("partitions", 1) < 1:
        raise UserError(f"conf file {path}: 'partitions' must be >= 1, got {raw['partitions']}")
    spark = raw.get("spark", {})
    for key, value in spark.items():
        if not (isinstance(key, str) and key.startswith("spark.")):
            raise UserError(f"conf file {path}: spark setting '{key}' must start with 'spark.'")
        if not isinstance(value, (str, int, float, bool)):
            raise UserError(f"conf file {path}: spark setting '{key}' must be a single value")
    return {
        "master": raw.get("master"),
        "partitions": raw.get("partitions"),
        "spark": {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in spark.items()},
    }


def under_spark_submit() -> bool:
    """True when spark-submit started this Python (its JVM already exists)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def job_master(flag: str | None, conf_master: str | None, remote: str | None,
               submitted: bool) -> str | None:
    """The master a job asks for: ``--master``; else, run with ``python``, the conf file's
    ``master``, else ``local[*]``; None (the master is not set here) under spark-submit, whose
    own ``--master`` then holds, and for a Spark Connect server."""
    if flag:
        return flag
    if remote or submitted:
        return None
    return conf_master or "local[*]"


def settings_to_apply(conf: dict[str, str], existing: list[tuple[str, str]],
                      local: bool) -> dict[str, str]:
    """Our defaults, then the conf file's settings, minus every key already set elsewhere."""
    settings = dict(DEFAULTS)
    if local:
        settings.update(LOCAL_DEFAULTS)
    settings.update(conf)
    taken = {key for key, _ in existing}
    return {k: v for k, v in settings.items() if k not in taken}


def is_connect(spark: SparkSession) -> bool:
    """True for a Spark Connect session (no SparkContext, no RDDs, no JVM in this process)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def remote_url(remote: str | None = None) -> str | None:
    """The Spark Connect server to use: ``remote``, else ``SPARK_REMOTE`` as pyspark reads it."""
    return remote or os.environ.get("SPARK_REMOTE") or None


def default_parallelism(spark: SparkSession) -> int:
    """The cluster's task slots (``defaultParallelism``). Spark Connect does not expose it, so
    there it is read once per session as the partition count Spark gives ``range`` (which is that
    same figure), in a job that runs in the JVM only."""
    if not is_connect(spark):
        return spark.sparkContext.defaultParallelism
    key = spark.session_id
    if key not in _PARALLELISM:
        from pyspark.sql import functions as F

        parts = spark.range(0, 1 << 16).select(F.spark_partition_id().alias("p"))
        last = parts.agg(F.max("p")).first()[0]
        _PARALLELISM[key] = int(last) + 1
    return _PARALLELISM[key]


#: Spark Connect sessions' default parallelism, by session id
_PARALLELISM: dict[str, int] = {}


def _connect_builder(url: str):
    try:
        import pyspark.sql.connect.session  # noqa: F401 - needs grpcio & co.
    except ImportError as exc:
        raise UserError(f"Spark Connect ({url}) needs the pyspark[connect] extras "
                        f"(missing: {exc.name}); pip install 'kmeans-dist[connect]'") from None
    return SparkSession.builder.remote(url)


def get_session(master: str | None = None, app_name: str = "kmeans-dist",
                conf: dict[str, str] | None = None, remote: str | None = None) -> SparkSession:
    """The active SparkSession, or a new one: a Spark Connect session when ``remote`` (or
    ``SPARK_REMOTE``) names a server, else ``master`` or spark-submit's, else ``local[*]``."""
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    url = remote_url(remote)
    if url is not None:
        if master:
            raise UserError(f"both a master ({master}) and a Spark Connect server ({url}) were "
                            "given; choose one")
        # a Connect server's static settings are its own; only the conf file's are sent
        builder = _connect_builder(url).appName(app_name)
        for key, value in (conf or {}).items():
            builder = builder.config(key, value)
        return builder.getOrCreate()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    local = not under_spark_submit()
    if local or master:
        builder = builder.master(master or "local[*]")
    # spark-submit's --conf and spark-defaults.conf are in SparkConf() and are never overridden
    for key, value in settings_to_apply(conf or {}, SparkConf().getAll(), local).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
