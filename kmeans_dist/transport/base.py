"""The transport interface the engine and the inits are written against."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Protocol, TypeVar

from kmeans_dist.blocks import Block
from kmeans_dist.threads import task_blas_threads

R = TypeVar("R")

#: a per-partition task: (that partition's blocks, a small value from the driver) -> result
TaskFn = Callable[[Iterable[Block], Any], R]


class Transport(Protocol):
    """Cached blocks of one fit, and a way to run a task over every partition."""

    num_partitions: int

    def run(self, fn: TaskFn, value: Any, label: str | None = None) -> list:
        """``fn(blocks, value)`` on every partition; results in partition order. ``label``
        describes the Spark job in the Spark UI (see ``job_label``)."""
        ...

    def release(self) -> None:
        """Drop the cached blocks (and anything kept for them on the executors)."""
        ...


def in_task(fn: TaskFn, blocks: Iterable[Block], value: Any) -> Any:
    """``fn(blocks, value)`` as every transport runs it inside a Spark task: BLAS limited to the
    task's CPUs (see ``threads``)."""
    with task_blas_threads():
        return fn(blocks, value)


@contextmanager
def job_label(spark_or_sc: Any, label: str | None) -> Iterator[None]:
    """Spark jobs started inside carry ``label``: as their description on classic Spark (Spark
    UI, History Server), as a job tag on Spark Connect (tags cannot hold commas: they become
    ';')."""
    if label is None:
        yield
        return
    if type(spark_or_sc).__module__.startswith("pyspark.sql.connect"):
        tag = label.replace(",", ";")
        spark_or_sc.addTag(tag)
        try:
            yield
        finally:
            spark_or_sc.removeTag(tag)
        return
    sc = getattr(spark_or_sc, "sparkContext", spark_or_sc)
    before = sc.getLocalProperty("spark.job.description")
    sc.setJobDescription(label)
    try:
        yield
    finally:
        sc.setLocalProperty("spark.job.description", before)
