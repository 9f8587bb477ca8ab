"""How the engine reaches the data: one small interface, one implementation per Spark flavour.

A transport holds the cached blocks of one fit and runs a task function from ``kmeans_dist.tasks``
on every partition, returning one result per partition in partition order. The engine and the
inits only ever call ``run``; everything Spark-specific (caching, broadcast, jobs) stays behind it.

Classic Spark (a SparkContext): ``resident`` (the default: long-running tasks keep the blocks,
in their workers' memory while it fits the executors' budget, else in executor-local
memory-mapped files; ``resident-memory`` and ``resident-files`` force one or the other),
``files`` (executor-local block files, one job per pass) or ``rdd`` (a cached RDD of numpy
blocks, one job per pass). Spark Connect has no RDDs: ``arrow-files`` (the default there:
executor-local block files and a cached DataFrame of their handles, one ``mapInArrow`` per pass)
or ``arrow`` (a cached DataFrame of binary blocks, one ``mapInArrow`` per pass); both also run on
classic Spark. On either, ``driver`` fits small data in the driver process (the client's, on
Spark Connect): "auto" picks it when the packed rows are small (see ``driver.small_enough``).
"""

from __future__ import annotations

import logging

from kmeans_dist.data import Packing
from kmeans_dist.errors import UserError
from kmeans_dist.transport.arrow import ArrowFilesTransport, ArrowTransport
from kmeans_dist.transport.base import Transport, job_label
from kmeans_dist.transport.driver import DriverTransport, Verdict, small_enough
from kmeans_dist.transport.local_files import LocalFilesTransport
from kmeans_dist.transport.rdd import RDDTransport
from kmeans_dist.transport.resident import ResidentTransport

log = logging.getLogger("kmeans_dist")

#: transport names accepted by ``KMeans(transport=...)``; "auto" picks by session
TRANSPORTS = {"resident": ResidentTransport, "resident-memory": ResidentTransport,
              "resident-files": ResidentTransport, "files": LocalFilesTransport,
              "rdd": RDDTransport, "arrow": ArrowTransport, "arrow-files": ArrowFilesTransport,
              "driver": DriverTransport}
#: the transports that need RDDs, i.e. a SparkContext
NEEDS_RDD = ("resident", "resident-memory", "resident-files", "files", "rdd")
#: where the resident tasks hold their blocks: the memory budget decides, or the user does
RESIDENT_STORAGE = {"resident": "auto", "resident-memory": "memory", "resident-files": "files"}


def check(name: str, connect: bool) -> None:
    """UserError for a transport the session cannot run."""
    if connect and name in NEEDS_RDD:
        raise UserError(f"transport '{name}' needs RDDs, which Spark Connect sessions do not "
                        "have; use transport='arrow-files' (the default there) or 'arrow'")


def choose(name: str, connect: bool, packing: Packing, d: int,
           driver_max_mb: float | None = None) -> tuple[str, Verdict | None]:
    """The transport to use, and for "auto" the figures it was chosen by: "auto" is the driver
    when the packed rows are small (``driver.small_enough``; ``driver_max_mb`` = 0 never),
    else resident on classic Spark (blocks in memory within the executors' budget, else in local
    files) and arrow-files on Spark Connect."""
    check(name, connect)
    if name != "auto":
        return name, None
    verdict = small_enough(packing, d, driver_max_mb)
    name = "driver" if verdict.small else "arrow-files" if connect else "resident"
    log.info("transport %s: %s", name, verdict.describe())
    return name, verdict


def make(name: str, packing: Packing, d: int, verdict: Verdict | None = None) -> Transport:
    """A transport of kind ``name`` over the packed rows (see ``data.packing``)."""
    if name == "driver":
        return DriverTransport(packing, d, verdict=verdict)
    if name in RESIDENT_STORAGE:
        return ResidentTransport(packing, d, storage=RESIDENT_STORAGE[name])
    if name == "arrow-files":
        return ArrowFilesTransport(packing, d)
    if name == "arrow":
        return ArrowTransport(packing.frame, d)
    from kmeans_dist.data import block_rdd

    return TRANSPORTS[name](block_rdd(packing.frame, d))


def record(name: str, transport: Transport) -> dict:
    """What the model records of the transport that ran the fit (name; for resident tasks,
    where the blocks were held; a fallback and its reason)."""
    return getattr(transport, "record", lambda: {"name": name})()


__all__ = ["Transport", "DriverTransport", "RDDTransport", "LocalFilesTransport", "ResidentTransport",
           "ArrowTransport", "ArrowFilesTransport", "TRANSPORTS", "check", "choose", "make", "record",
           "job_label"]
