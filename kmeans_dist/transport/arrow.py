"""Spark Connect (or any session): the binary-block DataFrame cached, one ``mapInArrow`` per task.

Spark Connect has no SparkContext, no RDD and no broadcast variable, but ``mapInArrow`` works. The
rows are packed once (``data.block_frame``: raw float64 bytes of a few thousand rows per row, with
their count and norms) and that DataFrame is cached. Each ``run`` is one ``mapInArrow`` over it: the
task function and its small driver value (the centroids) travel in the function's closure, every
partition returns one row (its index and its pickled result) and the client puts the rows in
partition order, so results fold in a fixed order whatever order the tasks finished in. The blocks
are viewed straight on the Arrow buffers (no copy), and the kernels are the same functions the
classic transports run; only the way they reach the data differs.

The per-block labels that let a task count moved rows are kept in files under the executor's
local directory, as ``LocalFilesTransport`` does (the cached partition's task usually runs where it
is cached); a task that finds none recomputes them, which gives the same labels.
"""

from __future__ import annotations

import pickle
import shutil
import uuid
from typing import Any, Iterator

from pyspark import StorageLevel
from pyspark.sql import DataFrame

from kmeans_dist.blocks import Block
from kmeans_dist.transport.base import TaskFn, job_label
from kmeans_dist.transport.local_files import _base, _root

RESULT_SCHEMA = "part int, result binary"


def _blocks(batches: Iterator, d: int, token: str) -> Iterator[Block]:
    """The blocks of one partition, viewed on the Arrow batches' buffers."""
    from kmeans_dist.data import decode_fields

    for batch in batches:
        if batch.num_rows == 0:
            continue
        part, start, rows = (batch.column(n).to_pylist() for n in ("part", "start", "rows"))
        x, x_sq, w = (batch.column(n) for n in ("x", "x_sq", "w"))
        problems = batch.column("problems").to_pylist()
        for i in range(batch.num_rows):
            block = decode_fields(d, part[i], start[i], rows[i], x[i].as_buffer(),
                                  x_sq[i].as_buffer(),
                                  None if not w[i].is_valid else w[i].as_buffer(), problems[i])
            block.scratch = _base(token, block.part, block.start)
            yield block


class _Task:
    """The mapInArrow function of one ``run``: ``fn(blocks, value)`` on this partition."""

    def __init__(self, fn: TaskFn, value: Any, d: int, token: str) -> None:
        self.fn, self.value, self.d, self.token = fn, value, d, token

    def __call__(self, batches: Iterator) -> Iterator:
        import os

        import pyarrow as pa
        from pyspark import TaskContext

        os.makedirs(_root(self.token), exist_ok=True)
        result = self.fn(_blocks(batches, self.d, self.token), self.value)
        yield pa.RecordBatch.from_pydict({
            "part": pa.array([TaskContext.get().partitionId()], pa.int32()),
            # the task's own result, read back only by the client that started this run
            "result": pa.array([pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)],
                               pa.binary()),
        })


def _remove_files(token: str, batches: Iterator) -> Iterator:
    import pyarrow as pa

    for _ in batches:
        pass
    shutil.rmtree(_root(token), ignore_errors=True)
    yield pa.RecordBatch.from_pydict({"part": pa.array([0], pa.int32()),
                                      "result": pa.array([b""], pa.binary())})


class ArrowTransport:
    """The block frame cached on the executors; each ``run`` is one ``mapInArrow`` job."""

    def __init__(self, frame: DataFrame, d: int,
                 storage_level: StorageLevel = StorageLevel.MEMORY_AND_DISK_DESER) -> None:
        # deserialized: each pass reads the cached columnar batches as they are (a serialized
        # level would decode every batch on every pass); what DataFrame.cache() uses too
        self.frame = frame.persist(storage_level)
        self.spark = frame.sparkSession
        self.d = d
        self.token = uuid.uuid4().hex
        self.num_partitions = 0  # known after the first run

    def run(self, fn: TaskFn, value: Any, label: str | None = None) -> list:
        out = self.frame.mapInArrow(_Task(fn, value, self.d, self.token), RESULT_SCHEMA)
        with job_label(self.spark, label):
            rows = out.collect()
        rows.sort(key=lambda r: r.part)
        self.num_partitions = len(rows)
        return [pickle.loads(r.result) for r in rows]

    def release(self) -> None:
        import functools

        try:
            self.frame.mapInArrow(functools.partial(_remove_files, self.token),
                                  RESULT_SCHEMA).collect()
        finally:
            self.frame.unpersist()
