"""A local Spark Connect server (local[2], 127.0.0.1, a free port) and a client session to it.

These tests run in a pytest process of their own (``make test`` starts it after the classic
tests): pyspark dispatches DataFrame functions to Spark Connect for the whole process once a
Connect session exists, so a classic session cannot share the process.

The server is what ``SparkSession.builder.remote("local[2]")`` starts (a classic session with
Spark's Connect plugin), made here by hand so that it listens on a free port the job
subprocesses can reach too, and so that the tests can read the server's own job records.
"""

from __future__ import annotations

import os
import sys

import pytest

from standalone import free_port

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


@pytest.fixture(scope="session")
def server():
    """The classic session hosting the Connect server, and the server's sc:// URL."""
    from pyspark import SparkConf, SparkContext
    from pyspark.sql import SparkSession

    port = free_port()
    conf = SparkConf().setMaster("local[2]").setAppName("kmeans-dist connect tests").setAll([
        ("spark.plugins", "org.apache.spark.sql.connect.SparkConnectPlugin"),
        ("spark.connect.grpc.binding.address", "127.0.0.1"),
        ("spark.connect.grpc.binding.port", str(port)),
        ("spark.ui.enabled", "false"),
        ("spark.ui.showConsoleProgress", "false"),
        ("spark.sql.shuffle.partitions", "4"),
        ("spark.default.parallelism", "2"),
        ("spark.executorEnv.OMP_NUM_THREADS", "1"),
        ("spark.executorEnv.OPENBLAS_NUM_THREADS", "1"),
    ])
    host = SparkSession(SparkContext(conf=conf))
    host.sparkContext.setLogLevel("ERROR")
    yield host, f"sc://127.0.0.1:{port}"
    host.stop()


@pytest.fixture(scope="session")
def spark(server):
    """A Spark Connect client session (what ``builder.remote(url)`` gives a user)."""
    from pyspark.sql.connect.session import SparkSession as ConnectSession

    # what pyspark's builder sets when it returns a Connect session: from here on, functions
    # build Connect expressions
    os.environ["SPARK_CONNECT_MODE_ENABLED"] = "1"
    session = ConnectSession.builder.remote(server[1]).getOrCreate()
    yield session
    session.stop()

