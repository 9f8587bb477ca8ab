"""One local[2] SparkSession for the whole test session (same Python on driver and workers)."""

import os
import sys

import pytest

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


@pytest.fixture(scope="session")
def spark():
    from kmeans_dist import get_session

    session = get_session(
        "local[2]",
        app_name="kmeans-dist tests",
        conf={"spark.sql.shuffle.partitions": "4", "spark.default.parallelism": "2"},
    )
    yield session
    session.stop()
