"""Classic Spark: a cached RDD of numpy blocks, a broadcast value, one mapPartitions job."""

from __future__ import annotations

import functools
from typing import Any, Iterable

from pyspark import RDD, StorageLevel

from kmeans_dist.transport.base import TaskFn


def _apply(fn: TaskFn, broadcast, blocks: Iterable) -> Iterable:
    yield fn(blocks, broadcast.value)


class RDDTransport:
    """Blocks cached in executor memory; each ``run`` is one Spark job with one task per partition."""

    def __init__(self, rdd: RDD, storage_level: StorageLevel = StorageLevel.MEMORY_AND_DISK):
        self.rdd = rdd.persist(storage_level)
        self.num_partitions = rdd.getNumPartitions()

    def run(self, fn: TaskFn, value: Any) -> list:
        broadcast = self.rdd.context.broadcast(value)
        try:
            return self.rdd.mapPartitions(functools.partial(_apply, fn, broadcast)).collect()
        finally:
            broadcast.destroy(blocking=False)

    def release(self) -> None:
        self.rdd.unpersist(blocking=False)
