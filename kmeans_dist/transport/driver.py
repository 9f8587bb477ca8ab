"""Small data: the fit runs in the driver process (on Spark Connect, the client process).

A small fit's time is Spark's fixed costs, not arithmetic: starting Python workers, a job per
pass, packing a few thousand rows. When the packed rows are small, this transport brings them to
the driver once, in one Arrow collect of the feature columns that runs in the JVM only (no Python
worker starts), each row tagged with its Spark partition. The driver packs each partition's rows
into exactly the blocks a Spark task would (``Packer.blocks`` over the same rows in the same
order), and every ``run`` calls the same ``tasks.*`` function on each partition's blocks, one
thread per core the driver may use (numpy's GEMM and the numba loop release the GIL), and returns
the results in partition order. The engine folds them as it folds any transport's, so the fit is
bit-identical to the distributed transports'.

Which fits come here (``transport="auto"``, see ``small_enough``): the packed rows (features,
squared norm, weight) must fit in the smaller of ``DEFAULT_LIMIT`` and ``DRIVER_SHARE`` of the
memory the driver process has available (and, on classic Spark, half of
``spark.driver.maxResultSize``, which the collect passes through). Spark's own size estimate of
the rows (files, tables, ``range``) decides first: over the limit, the fit goes to the executors
without a job. Under it, one job decides and brings the rows: the collect asks for one row more
than the limit's worth, so a larger input stops there. Without an estimate (rows from an RDD or
from Python objects) a ``count`` decides first, as a capped collect would shuffle every row of a
large input before stopping.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Iterable

import numpy as np

from kmeans_dist.blocks import Block
from kmeans_dist.config import is_connect
from kmeans_dist.data import Packing
from kmeans_dist.transport.base import TaskFn, job_label
from kmeans_dist.threads import HeldLimit
from kmeans_dist.transport.budget import (MIB, available_memory, block_row_bytes, mib,
                                          size_bytes)

log = logging.getLogger("kmeans_dist")

#: the most packed bytes ``transport="auto"`` fits in the driver
DEFAULT_LIMIT = 128 * MIB
#: the share of the driver's available memory the packed rows may take
DRIVER_SHARE = 1 / 8
#: Spark's estimates from here up are its "unknown" (Long.MaxValue, spark.sql.defaultSizeInBytes)
#: scaled by a projection's share of the columns, not sizes
UNKNOWN = 1 << 50
#: the column the collect tags each row with: its Spark partition
PART = "_kmeans_dist_part"


# --------------------------------------------------------------------------- the rule
@dataclass(frozen=True)
class Verdict:
    """Whether a fit's packed rows are small enough for the driver, and the figures why."""

    small: bool
    limit: int  # bytes
    source: str  # how the limit was set
    rows: int | None = None  # None: over the limit before every row was seen
    packed: int | None = None  # bytes: rows x bytes per row, or Spark's estimate
    table: Any = field(default=None, repr=False, compare=False)  # the rows, when small
    estimated: bool = False  # ``packed`` is Spark's estimate

    def describe(self) -> str:
        if self.limit <= 0:
            return f"the driver path is off ({self.source})"
        if self.rows is not None:
            size = f"{self.rows:,} rows = {_size(self.packed)} packed"
        elif self.estimated:
            size = f"Spark estimates {_size(self.packed)}"
        else:
            size = f"more than {_size(self.packed - 1)} packed"
        verb = "within" if self.small else "over"
        return f"{size}, {verb} the driver limit of {_size(self.limit)} ({self.source})"


def _size(n: int) -> str:
    return mib(n) if n >= MIB else f"{n / 1024:,.1f} KiB"


def packed_row_bytes(d: int, weighted: bool, dtype: str = "float64") -> int:
    """Bytes per packed row: features (in the blocks' dtype), squared norm, weight."""
    return block_row_bytes(d, weighted, dtype)


def driver_limit(spark, max_mb: float | None = None) -> tuple[int, str]:
    """The most packed bytes fitted in the driver, and where the figure comes from: ``max_mb``
    MiB when given, else the smaller of ``DEFAULT_LIMIT`` and ``DRIVER_SHARE`` of the driver's
    available memory; on classic Spark never more than half of ``spark.driver.maxResultSize``."""
    if max_mb is not None:
        limit, source = int(max_mb * MIB), f"driver_max_mb={max_mb:g}"
    else:
        share = int(DRIVER_SHARE * available_memory())
        limit, source = min(DEFAULT_LIMIT, share), (
            f"the smaller of {mib(DEFAULT_LIMIT)} and {DRIVER_SHARE:g} x the driver's "
            f"{mib(share / DRIVER_SHARE)} available")
    if limit and not is_connect(spark):
        result = size_bytes(spark.sparkContext.getConf().get("spark.driver.maxResultSize", "1g"))
        if 0 < result // 2 < limit:
            limit, source = result // 2, f"half of spark.driver.maxResultSize {mib(result)}"
    return limit, source


def small_enough(packing: Packing, d: int, max_mb: float | None = None) -> Verdict:
    """Whether the packed rows fit under ``driver_limit`` (0 turns the driver path off); when
    they do, the verdict holds them, collected (``collect_rows``): one job decides and brings
    them."""
    spark = packing.rows.sparkSession
    limit, source = driver_limit(spark, max_mb)
    if limit <= 0:
        return Verdict(False, 0, source or "off")
    estimate = _spark_estimate(packing)
    if estimate is not None and estimate > limit:
        return Verdict(False, limit, source, None, estimate, estimated=True)
    _warm_up_kernels(packing.packer.dtype)
    row_bytes = packed_row_bytes(d, packing.packer.weight_col is not None, packing.packer.dtype)
    most = limit // row_bytes
    with job_label(spark, "kmeans_dist: bringing small data to the driver"):
        if estimate is None:
            # no estimate (rows from an RDD or Python objects): count first, since under a cap
            # Spark gathers every partition's rows through a shuffle before it stops
            rows = packing.rows.count()
            if rows > most:
                return Verdict(False, limit, source, rows, rows * row_bytes)
        table = collect_rows(packing, None if estimate is None else most + 1)
    if table.num_rows > most:
        return Verdict(False, limit, source, None, most * row_bytes + 1)
    return Verdict(True, limit, source, table.num_rows, table.num_rows * row_bytes, table)


def collect_rows(packing: Packing, cap: int | None = None):
    """The rows (features, weight) as one Arrow table, each tagged with its Spark partition
    (column ``PART``), in partition order; at most ``cap`` of them. One job, in the JVM only.

    Under a cap Spark may gather the partitions' rows through a shuffle, which keeps each
    partition's rows in order but not the partitions: a stable sort on the tag restores it."""
    from pyspark.sql import functions as F

    tagged = packing.rows.withColumn(PART, F.spark_partition_id())
    table = (tagged if cap is None else tagged.limit(cap)).toArrow()
    part_of = table.column(PART).to_numpy()
    if len(part_of) and np.any(np.diff(part_of) < 0):
        table = table.take(np.argsort(part_of, kind="stable"))
    return table


def _spark_estimate(packing: Packing) -> int | None:
    """Spark's own size estimate of the rows (optimizer statistics: file sizes, ``range``
    lengths), None where it has none. Often below the packed size (text and compressed files are
    denser than float64 rows with their norms), so it is only trusted to say "too big"."""
    df = packing.rows
    try:
        if is_connect(df.sparkSession):
            return _connect_estimate(df)
        size = int(str(df._jdf.queryExecution().optimizedPlan().stats().sizeInBytes()))
    except Exception as exc:  # noqa: BLE001 - an estimate is optional: count instead
        log.debug("no size estimate from Spark: %s", exc)
        return None
    return None if size >= UNKNOWN else size


def _connect_estimate(df) -> int | None:
    """The optimized plan's sizeInBytes as the server's ``explain(mode="cost")`` prints it."""
    import re

    text = df._explain_string(mode="cost")
    optimized = text.split("== Optimized Logical Plan ==", 1)[-1]
    m = re.search(r"sizeInBytes=([\d.]+)\s*(B|KiB|MiB|GiB|TiB|PiB|EiB)", optimized)
    if m is None:
        return None
    scale = {"B": 0, "KiB": 10, "MiB": 20, "GiB": 30, "TiB": 40, "PiB": 50, "EiB": 60}[m.group(2)]
    size = float(m.group(1)) * (1 << scale)
    return None if size >= UNKNOWN else int(size)


_warming: threading.Thread | None = None


def _warm_up_kernels(dtype: str = "float64") -> None:
    """Load numba's compiled loops in this process in the background (once): ~1 s in a fresh
    process, overlapped with the Spark jobs that count and collect the rows."""
    global _warming
    if _warming is None:
        from kmeans_dist import kernels

        _warming = threading.Thread(target=kernels.warm_up, args=(dtype,),
                                    name="kmeans_dist-warm-up", daemon=True)
        _warming.start()


# --------------------------------------------------------------------------- the transport
class DriverTransport:
    """The packed blocks in the driver's memory, partition by partition; ``run`` calls the task
    function on every partition in a thread pool (see the module docstring).

    ``num_partitions`` counts partitions up to the last that holds rows: a partition without
    rows returns nothing any task function would add to a fold (zero sums, no candidates).
    """

    def __init__(self, packing: Packing, d: int, threads: int | None = None,
                 verdict: Verdict | None = None) -> None:
        self.packing = packing
        self.spark = packing.rows.sparkSession
        self.d = d
        self.verdict = verdict
        self.threads = threads or driver_cores()
        self.num_partitions = 0
        self._parts: list[list[Block]] | None = None
        self._run_ids: set[str] = set()
        self._holding = False  # BLAS limited for the threads (from the first run to release)

    def run(self, fn: TaskFn, value: Any, label: str | None = None) -> list:
        if self._parts is None:
            with job_label(self.spark, label):
                self._parts = self._collect()
            self.num_partitions = len(self._parts)
            self._pool_size = min(self.threads, len(self._parts))
            HeldLimit.hold(max(1, driver_cores() // self._pool_size))
            self._holding = True
        self._run_ids.update(_run_ids(value))
        if self._pool_size == 1:
            return [fn(iter(blocks), value) for blocks in self._parts]
        with ThreadPoolExecutor(self._pool_size, thread_name_prefix="kmeans_dist-driver") as pool:
            return list(pool.map(lambda blocks: fn(iter(blocks), value), self._parts))

    def _collect(self) -> list[list[Block]]:
        """Every partition's rows (those the verdict collected, else one Arrow collect now),
        packed as its task would pack them."""
        table = (self.verdict.table if self.verdict is not None and self.verdict.table is not None
                 else collect_rows(self.packing))
        if self.verdict is not None:
            self.verdict = replace(self.verdict, table=None)  # the blocks hold the rows now
        part_of = table.column(PART).to_numpy()
        table = table.drop_columns([PART])
        parts: list[list[Block]] = [[] for _ in range(int(part_of.max()) + 1 if len(part_of)
                                                     else 1)]
        edges = np.flatnonzero(np.diff(part_of)) + 1
        for lo, hi in zip(np.r_[0, edges], np.r_[edges, len(part_of)]):
            if hi > lo:  # no rows at all: one empty partition
                part = int(part_of[lo])
                parts[part] = list(self.packing.packer.blocks(
                    table.slice(lo, hi - lo).to_batches(), part))
        self.held = sum(b.x.nbytes + b.x_sq.nbytes + (0 if b.w is None else b.w.nbytes)
                        for blocks in parts for b in blocks)
        return parts

    def release(self) -> None:
        from kmeans_dist import tasks

        self._parts = None
        tasks.LABELS.forget(self._run_ids)
        if self._holding:
            self._holding = False
            HeldLimit.let_go()

    def record(self) -> dict:
        """What the model records: the name, the partitions, the rule's figures, the threads."""
        out: dict[str, Any] = {"name": "driver", "partitions": self.num_partitions,
                               "threads": self.threads, "held_bytes": getattr(self, "held", None)}
        if self.verdict is not None:
            out.update(rows=self.verdict.rows, packed_bytes=self.verdict.packed,
                       limit=self.verdict.limit, limit_source=self.verdict.source)
        return out


def driver_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _run_ids(value: Any) -> Iterable[str]:
    """The Lloyd runs a task value belongs to (their labels are cached while the fit runs)."""
    for v in value if isinstance(value, list) else [value]:
        run_id = getattr(v, "run_id", None)
        if isinstance(run_id, str):
            yield run_id
