"""DataFrame transports (Spark Connect, or any session): one ``mapInArrow`` job per task.

Spark Connect has no SparkContext, no RDD and no broadcast variable, but ``mapInArrow`` works. The
rows are packed once (``data.block_frame``: raw float64 bytes of a few thousand rows per row, with
their count and norms) and that DataFrame is cached. Each ``run`` is one ``mapInArrow`` over it: the
task function and its small driver value (the centroids) travel in the function's closure, every
partition returns one row (its index and its result in ``kmeans_dist.codec``, which the client
decodes: it never unpickles what a server sends) and the client puts the rows in partition order,
so results fold in a fixed order whatever order the tasks finished in. The blocks
are viewed straight on the Arrow buffers (no copy), and the kernels are the same functions the
classic transports run; only the way they reach the data differs.

The per-block labels that let a task count moved rows are kept in files under the executor's
local directory, as ``LocalFilesTransport`` does (the cached partition's task usually runs where it
is cached); a task that finds none recomputes them, which gives the same labels.

``ArrowFilesTransport`` (the default on Spark Connect) is ``LocalFilesTransport`` in DataFrame
form: moving the cached blocks from the JVM to the Python worker is most of a pass above, so the
rows are packed and written once to executor-local ``.npy`` files, block by block as they arrive,
what is cached is a tiny DataFrame of their handles (one row per block), and each pass maps the
files instead of receiving the data. A partition whose task finds no files (it ran elsewhere, the
files were removed) is recomputed from the rows' lineage, which writes its files again where it
runs.
"""

from __future__ import annotations

import json
import shutil
import uuid
from typing import Any, Iterator

from pyspark import StorageLevel
from pyspark.sql import DataFrame

from kmeans_dist import codec
from kmeans_dist.blocks import Block, problems_from_json
from kmeans_dist.data import Packer, Packing
from kmeans_dist.transport.base import TaskFn, in_task, job_label
from kmeans_dist.transport.local_files import _base, _open, _root, store_each

#: one row per task: its partition, and its result; ``hit`` is false where a task over block
#: handles found no files (and has no result)
RESULT_SCHEMA = "part int, hit boolean, result binary"
#: a block written to executor-local files: everything but its arrays
HANDLE_SCHEMA = "part int, start long, has_w boolean, problems string"


def _blocks(batches: Iterator, d: int, token: str | None) -> Iterator[Block]:
    """The blocks of one partition, viewed on the Arrow batches' buffers; their side files
    (labels) under the run's executor-local directory, or none (``token`` None: in memory)."""
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
            if token is not None:
                block.scratch = _base(token, block.part, block.start)
            yield block


def _result(part: int, hit: bool = True, result: Any = None):
    """A task's one row of RESULT_SCHEMA, its result in the codec; read back only by the client
    that started the job (``_collect``)."""
    import pyarrow as pa

    data = codec.encode(result) if hit else b""
    return pa.RecordBatch.from_pydict({"part": pa.array([part], pa.int32()),
                                       "hit": pa.array([hit], pa.bool_()),
                                       "result": pa.array([data], pa.binary())})


def _collect(spark, out: DataFrame, label: str | None) -> list:
    """The rows of a job of ``_result`` rows, in partition order."""
    with job_label(spark, label):
        return sorted(out.collect(), key=lambda r: r.part)


def _partition() -> int:
    from pyspark import TaskContext

    return TaskContext.get().partitionId()


class _Task:
    """The mapInArrow function of one ``run``: ``fn(blocks, value)`` on this partition."""

    def __init__(self, fn: TaskFn, value: Any, d: int, token: str) -> None:
        self.fn, self.value, self.d, self.token = fn, value, d, token

    def __call__(self, batches: Iterator) -> Iterator:
        import os

        os.makedirs(_root(self.token), exist_ok=True)
        yield _result(_partition(),
                      result=in_task(self.fn, _blocks(batches, self.d, self.token), self.value))


def _remove_files(token: str, batches: Iterator) -> Iterator:
    for _ in batches:
        pass
    shutil.rmtree(_root(token), ignore_errors=True)
    yield _result(_partition())


def _release(spark, frame: DataFrame, token: str) -> None:
    """Remove the run's executor-local files (labels, blocks), then drop the cached frame."""
    import functools

    with job_label(spark, "kmeans_dist: releasing the cached blocks"):
        try:
            frame.mapInArrow(functools.partial(_remove_files, token), RESULT_SCHEMA).collect()
        finally:
            frame.unpersist()


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
        rows = _collect(self.spark, out, label)
        self.num_partitions = len(rows)
        return [codec.decode(r.result) for r in rows]

    def release(self) -> None:
        _release(self.spark, self.frame, self.token)


# --------------------------------------------------------------------------- executor-local files
class _Store:
    """The cached handle frame's function: pack the partition's rows into blocks and write each
    to local files as it is made (one block in memory at a time)."""

    def __init__(self, packer: Packer, token: str) -> None:
        self.packer, self.token = packer, token

    def __call__(self, batches: Iterator) -> Iterator:
        import pyarrow as pa

        handles = store_each(self.token, self.packer.blocks(batches))
        if handles:
            yield pa.RecordBatch.from_pydict({
                "part": pa.array([h["part"] for h in handles], pa.int32()),
                "start": pa.array([h["start"] for h in handles], pa.int64()),
                "has_w": pa.array([h["has_w"] for h in handles], pa.bool_()),
                "problems": pa.array([json.dumps(h["problems"]) for h in handles], pa.string()),
            })


class _FromFiles:
    """A pass over the handles: ``fn(blocks, value)`` on the partition's mapped files."""

    def __init__(self, fn: TaskFn, value: Any, token: str) -> None:
        self.fn, self.value, self.token = fn, value, token

    def __call__(self, batches: Iterator) -> Iterator:
        handles = [{**h, "problems": problems_from_json(h["problems"])}
                   for batch in batches for h in batch.to_pylist()]
        blocks = _open(self.token, handles)
        if blocks is None:
            yield _result(_partition(), hit=False)
        else:
            yield _result(_partition(), result=in_task(self.fn, blocks, self.value))


class _FromSource:
    """The recompute of lost partitions: their rows again from the lineage, packed and written
    to files here, then ``fn`` on them. Other partitions only drain their rows."""

    def __init__(self, fn: TaskFn, value: Any, packer: Packer, token: str,
                 parts: list[int]) -> None:
        self.fn, self.value, self.packer, self.token = fn, value, packer, token
        self.parts = set(parts)

    def __call__(self, batches: Iterator) -> Iterator:
        part = _partition()
        if part not in self.parts:
            for _ in batches:  # drained: Spark discards a worker that leaves input unread
                pass
            return
        handles = store_each(self.token, self.packer.blocks(batches))
        blocks = _open(self.token, handles)
        yield _result(part, result=in_task(self.fn, blocks, self.value))


class ArrowFilesTransport:
    """Blocks in executor-local files, a cached DataFrame of their handles, one ``mapInArrow``
    over the handles per ``run``; lost partitions are recomputed from the rows' lineage.

    The rows are packed where they arrive, in the task that writes the files, and each block goes
    to disk as soon as it is full: a task holds one block and one Arrow batch of rows at a time,
    whatever the partition's size (a frame of packed blocks would reach it as one Arrow batch of
    up to ``maxRecordsPerBatch`` blocks, i.e. the whole partition)."""

    def __init__(self, packing: Packing, d: int) -> None:
        self.packing = packing
        self.spark = packing.rows.sparkSession
        self.d = d
        self.token = uuid.uuid4().hex
        self.handles = packing.rows.mapInArrow(_Store(packing.packer, self.token),
                                               HANDLE_SCHEMA).persist(StorageLevel.MEMORY_AND_DISK)
        self.num_partitions = 0  # known after the first run
        self.misses = 0

    def run(self, fn: TaskFn, value: Any, label: str | None = None) -> list:
        out = self.handles.mapInArrow(_FromFiles(fn, value, self.token), RESULT_SCHEMA)
        rows = _collect(self.spark, out, label)
        self.num_partitions = len(rows)
        results = {r.part: codec.decode(r.result) for r in rows if r.hit}
        missed = [r.part for r in rows if not r.hit]
        if missed:
            self.misses += len(missed)
            redo = self.packing.rows.mapInArrow(
                _FromSource(fn, value, self.packing.packer, self.token, missed), RESULT_SCHEMA)
            redone = _collect(self.spark, redo, label and f"{label} (recomputing lost blocks)")
            results.update((r.part, codec.decode(r.result)) for r in redone)
            missing = sorted(set(missed) - set(results))
            if missing:
                raise RuntimeError(f"partitions {missing} lost their block files and their "
                                   "recompute found no rows: did the input change mid-fit?")
        return [results[p] for p in range(self.num_partitions)]

    def release(self) -> None:
        _release(self.spark, self.handles, self.token)
