"""Classic Spark: a cached RDD of numpy blocks and one mapPartitions job per task function."""

from __future__ import annotations

import functools
from typing import Any, Iterable

from pyspark import RDD, StorageLevel

from kmeans_dist.transport.base import TaskFn, in_task, job_label


def _apply(fn: TaskFn, value: Any, blocks: Iterable) -> Iterable:
    yield in_task(fn, blocks, value)


class RDDTransport:
    """Blocks cached on the executors; each ``run`` is one Spark job with one task per partition.

    The driver's value (the centroids) travels inside the task closure. Spark broadcasts each
    stage's serialized tasks to the executors once, and PySpark turns a closure over 1 MB into an
    explicit broadcast variable, so large centroid sets are broadcast too. An explicit
    ``sc.broadcast`` per iteration was measured at ~50-70 ms more per job on 2 cores than this.
    """

    def __init__(self, rdd: RDD, storage_level: StorageLevel = StorageLevel.MEMORY_AND_DISK):
        self.rdd = rdd.persist(storage_level)
        self.num_partitions = rdd.getNumPartitions()

    def run(self, fn: TaskFn, value: Any, label: str | None = None) -> list:
        with job_label(self.rdd.context, label):
            return self.rdd.mapPartitions(functools.partial(_apply, fn, value)).collect()

    def release(self) -> None:
        self.rdd.unpersist(blocking=False)
